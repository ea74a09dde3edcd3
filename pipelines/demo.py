"""`imf demo`: the whole pipeline on the embedded dataset, on a laptop.

embedded digits -> `imf encode` (Ray Data) -> `imf train` (Ray Train, 2 CPU workers,
MLflow in a local SQLite store) -> 1-NFE sample grids logged to the run.
`imf demo --core-only` trains with imf_core alone, no Ray or MLflow.
"""

import json
import sys
import time
from pathlib import Path

import torch

from imf_core import EMA, DrawConfig, IMFObjective, build_model, draw_step, sample, save_model

from .images import save_grid


def digits_tensor():
    """1797 labelled 8x8 digits from scikit-learn (ships with the package), scaled to [-1, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    return x, torch.tensor(digits.target, dtype=torch.long)


def run_core_demo(out: Path, seconds: float = 60.0, batch: int = 64, seed: int = 0):
    out = Path(out)
    torch.manual_seed(seed)
    x_all, y_all = digits_tensor()
    num_classes = 10
    net = build_model("Tiny/2", input_size=8, in_channels=1, num_classes=num_classes)
    objective = IMFObjective(num_classes)
    draws_cfg = DrawConfig()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.0)
    ema = EMA(net, decays=(0.995,))
    g = torch.Generator().manual_seed(seed)
    print(f"imf demo: training Tiny/2 on {len(x_all)} digits for {seconds:.0f} s on CPU", flush=True)
    start, step, seen = time.time(), 0, 0
    while time.time() - start < seconds:
        idx = torch.randint(len(x_all), (batch,), generator=g)
        result = objective(net, x_all[idx], y_all[idx], draw_step(batch, x_all.shape[1:], draws_cfg, g))
        opt.zero_grad(set_to_none=True)
        result.loss.backward()
        opt.step()
        ema.update(net, step)
        step, seen = step + 1, seen + batch
        if step % 50 == 0:
            elapsed = time.time() - start
            print(f"step {step:5d}  images {seen:7d}  {seen / elapsed:6.0f} img/s  loss {result.loss.item():.4f}"
                  f"  mse_u {result.mse_u.item():.4f}  mse_v {result.mse_v.item():.4f}", flush=True)
    ema.copy_to(net)
    save_model(out / "model", net, extra={"dataset": "sklearn-digits", "steps": step})

    per_class = 8
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    noise = torch.randn((len(labels), 1, 8, 8), generator=torch.Generator().manual_seed(1))
    paths = []
    for omega in (1.0, 2.0, 4.0):
        images = sample(net, noise, labels, omega=omega, t_min=0.0, t_max=1.0, steps=1)
        paths.append(save_grid(images, out / f"samples_1nfe_omega{omega:g}.png", columns=per_class, scale=4))
    print(f"trained {step} steps; 1-NFE sample grids (one row per class):", *paths, sep="\n  ")
    return paths



CONFIGS = Path(__file__).resolve().parent / "configs"
MODEL_NAME = "imf-digits-demo"


def sample_grid(npz: Path, path: Path, per_class: int = 10) -> Path:
    """The first `per_class` samples of every class, one row per class."""
    import numpy as np

    data = np.load(npz)
    images, labels = data["arr_0"], data["labels"]
    rows = [images[labels == c][:per_class] for c in np.unique(labels)]
    chosen = torch.from_numpy(np.concatenate(rows)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return save_grid(chosen, path, columns=per_class, scale=4)


def run_pipeline_demo(out: Path, workers: int = 2, max_steps: int | None = None) -> int:
    from . import cli

    out = Path(out).resolve()
    images, latents, runs = out / "images", out / "latents", out / "runs"
    tracking = f"sqlite:///{out / 'mlruns' / 'mlflow.db'}"
    (out / "mlruns").mkdir(parents=True, exist_ok=True)

    def step(title, argv):
        print(f"\n=== imf demo: {title}\n$ imf {' '.join(argv)}", flush=True)
        status = cli.main(argv)
        if status:
            raise SystemExit(status)

    if not (images / "0").is_dir():
        step("the embedded dataset as class folders", ["data", "embedded", "--out", str(images)])
    step("encode to latent shards (Ray Data)", ["encode", "--images", str(images), "--out", str(latents),
                                                "--codec", "pixels", "--resolution", "8", "--grayscale"])
    config = CONFIGS / "demo.yaml"
    if max_steps:
        import yaml

        raw = yaml.safe_load(config.read_text())
        raw["train"]["max_steps"] = max_steps
        config = out / "demo.yaml"
        config.write_text(yaml.safe_dump(raw))
    name = time.strftime("demo-%Y%m%d-%H%M%S")
    step(f"train iMF Tiny/2 on {workers} CPU workers (Ray Train), register the EMA weights", [
        "train", "--data", str(latents), "--config", str(config), "--workers", str(workers),
        "--storage", str(runs), "--name", name, "--tracking-uri", tracking, "--register", MODEL_NAME])
    model = f"models:/{MODEL_NAME}@champion"
    step("score guidance settings without retraining; store the best on the version", [
        "evaluate", "sweep", "--model", model, "--reference", "digits", "--omegas", "1,1.5,2,3,4",
        "--intervals", "0:1,0.2:0.8", "--num", "500", "--out", str(out / "sweep"), "--tracking-uri", tracking])
    samples = out / "samples"
    step("1-NFE generation with Ray Data at the best setting", [
        "sample", "--model", model, "--num", "1000", "--out", str(samples), "--format", "npz",
        "--shard-size", "250", "--tracking-uri", tracking])
    step("evaluate against the real digits", [
        "evaluate", "--samples", str(samples), "--reference", "digits", "--out", str(out / "metrics.json")])
    grid = sample_grid(samples / "samples.npz", out / "samples_grid.png")
    print("\n=== imf demo: done")
    print(f"metrics: {json.loads((out / 'metrics.json').read_text())}")
    print(f"1-NFE samples (one row per class): {grid}")
    print(f"metric versus omega: {next((out / 'sweep').glob('*_vs_omega.png'), None)}")
    mlflow = Path(sys.executable).parent / "mlflow"
    print(f"MLflow UI:  {mlflow} ui --backend-store-uri {tracking} --host 127.0.0.1  (then open http://127.0.0.1:5000)")
    return 0


def register(steps):
    parser = steps.add_parser("demo", help="run the whole pipeline on the embedded dataset")
    parser.add_argument("--out", default="demo_out")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=None, help="override the demo config's train.max_steps")
    parser.add_argument("--core-only", action="store_true", help="train with imf_core alone (no Ray, no MLflow)")
    parser.add_argument("--seconds", type=float, default=90.0, help="--core-only: training time")

    def run(args):
        if args.core_only:
            run_core_demo(Path(args.out), seconds=args.seconds)
            return 0
        return run_pipeline_demo(Path(args.out), workers=args.workers, max_steps=args.max_steps)

    parser.set_defaults(func=run)
