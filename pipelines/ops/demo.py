"""`imf demo`: the whole pipeline on the embedded dataset, on a laptop, and how good its samples are.

The training split of the digits -> `imf encode` (Ray Data) -> `imf train` (Ray Train, 2 CPU workers,
MLflow in a local SQLite store, registered) -> `imf evaluate sweep` (guidance settings, the best stored
on the version) -> `imf sample` at 1 and 2 steps (Ray Data) -> `imf evaluate` against the held-out digits.
It ends with a table: the demo's 1-NFE and 2-NFE scores beside what real digits score (the floor) and
what each class's mean image scores (no diversity), logged to the training run and the model version.
`imf demo --core-only` trains with imf_core alone, no Ray or MLflow.
"""

import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..storage import Location

MODEL_NAME = "imf-digits-demo"
FD, PRECISION, RECALL = "fd_pixels_digits_test", "precision_k3_pixels_digits_test", "recall_k3_pixels_digits_test"


def run_core_demo(out: Path, seconds: float = 60.0, batch: int = 64, seed: int = 0):
    """Train a Tiny/2 on the digits with imf_core only, and save 1-NFE grids at a few omegas."""
    from imf_core import EMA, DrawConfig, FastIMFObjective, build_model, draw_step, generate, save_model
    from imf_core.codecs import PixelCodec

    from ..data.digits import digits
    from ..data.images import as_rgb_uint8, save_grid

    out = Path(out)
    pixels, labels = digits("train")
    x_all, y_all = torch.tensor(pixels, dtype=torch.float32)[:, None] / 127.5 - 1, torch.as_tensor(labels)
    net = build_model("Tiny/2", torch.Generator().manual_seed(seed), input_size=8, in_channels=1, num_classes=10)
    objective, draws_cfg = FastIMFObjective(10), DrawConfig()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.0)
    ema, g = EMA(net, decays=(0.995,)), torch.Generator().manual_seed(seed)
    print(f"imf demo: training Tiny/2 on {len(x_all)} digits for {seconds:.0f} s on CPU", flush=True)
    start, step = time.time(), 0
    while time.time() - start < seconds:
        idx = torch.randint(len(x_all), (batch,), generator=g)
        result = objective(net, x_all[idx], y_all[idx], draw_step(batch, x_all.shape[1:], draws_cfg, g))
        opt.zero_grad(set_to_none=True)
        result.loss.backward()
        opt.step()
        ema.update(net, step)
        step += 1
        if step % 50 == 0:
            print(f"step {step:5d}  {step * batch / (time.time() - start):6.0f} img/s  mse_u {result.mse_u.item():.4f}"
                  f"  mse_v {result.mse_v.item():.4f}", flush=True)
    ema.copy_to(net)
    save_model(out / "model", net.eval(), extra={"dataset": "sklearn-digits", "steps": step})
    grid_labels = torch.arange(10).repeat_interleave(8)
    noise = torch.randn((len(grid_labels), 1, 8, 8), generator=torch.Generator().manual_seed(1))
    paths = [save_grid(as_rgb_uint8(generate(net, PixelCodec(1), noise, grid_labels, omega=omega)),
                       out / f"samples_1nfe_omega{omega:g}.png", columns=8, scale=4) for omega in (1.0, 2.0, 4.0)]
    print(f"trained {step} steps; 1-NFE sample grids (one row per class):", *paths, sep="\n  ")
    return paths


def summary_rows(scores: dict, baselines: dict) -> list[tuple]:
    """(row name, FD, precision, recall) of the demo's samples and of the two stand-ins."""
    rows = [(name, s[FD], s[PRECISION], s[RECALL]) for name, s in scores.items()]
    return rows + [(f"{name} (baseline)", s[FD], s[PRECISION], s[RECALL]) for name, s in baselines.items()]


def format_summary(rows: list[tuple]) -> str:
    lines = [f"{'':34s} {'pixel FD':>9s} {'precision':>10s} {'recall':>7s}"]
    lines += [f"{name:34s} {fd:9.3f} {p:10.3f} {r:7.3f}" for name, fd, p, r in rows]
    return "\n".join(lines)


def log_summary(tracking: str, run_id: str, rows: list[tuple], version):
    """The table's numbers on the training run (metrics demo.*) and the registered version (tags)."""
    from ..tracking import connect, log_params

    client, _ = connect(tracking)
    slug = {name: re.sub(r"[^a-z0-9]+", "_", name.split(" (")[0].lower()).strip("_") for name, *_ in rows}
    values = {f"demo.{slug[name]}.{what}": value for name, *numbers in rows
              for what, value in zip(("fd", "precision", "recall"), numbers)}
    for key, value in values.items():
        client.log_metric(run_id, key, value)
    log_params(client, run_id, {"demo.reference": "digits (held-out test split, 596 images)"})
    client.log_table(run_id, data={"row": [r[0] for r in rows], "pixel_fd": [r[1] for r in rows],
                                   "precision": [r[2] for r in rows], "recall": [r[3] for r in rows]},
                     artifact_file="demo_summary.json")
    for key, value in values.items():
        client.set_model_version_tag(version.name, version.version, f"metric.{key}", f"{value:.6g}")


def run_pipeline_demo(out: Path, workers: int = 2, max_steps: int | None = None) -> int:
    from .. import cli
    from ..evaluation.scoring import digits_baselines
    from ..models.registry import resolve_version
    from ..tracking import connect

    out = Path(out).resolve()
    images, latents, runs = out / "images", out / "latents", out / "runs"
    tracking = f"sqlite:///{out / 'mlruns' / 'mlflow.db'}"
    (out / "mlruns").mkdir(parents=True, exist_ok=True)
    started = time.time()

    def step(title, argv):
        print(f"\n=== imf demo [{time.time() - started:5.0f} s]: {title}\n$ imf {' '.join(argv)}", flush=True)
        status = cli.main(argv)
        if status:
            raise SystemExit(status)

    if not (images / "0").is_dir():
        step("the training split of the embedded digits as class folders", ["data", "embedded", "--out", str(images)])
    step("encode to latent shards (Ray Data)", ["encode", "--images", str(images), "--out", str(latents),
                                                "--codec", "pixels", "--resolution", "8", "--grayscale"])
    name = time.strftime("demo-%Y%m%d-%H%M%S")
    overrides = ["--max-steps", str(max_steps)] if max_steps else []
    step(f"train iMF on {workers} CPU workers (Ray Train), register the EMA weights", [
        "train", "--data", str(latents), "--config", "demo", "--workers", str(workers),
        "--storage", str(runs), "--name", name, "--tracking-uri", tracking, "--register", MODEL_NAME, *overrides])
    model = f"models:/{MODEL_NAME}@champion"
    step("score guidance settings against the held-out digits; store the best on the version", [
        "evaluate", "sweep", "--model", model, "--reference", "digits", "--omegas", "1,1.25,1.5,2",
        "--intervals", "0:1", "--num", "1000", "--out", str(out / "sweep"), "--tracking-uri", tracking])
    scores = {}
    for steps in (1, 2):
        samples = out / f"samples_{steps}nfe"
        step(f"{steps}-NFE generation with Ray Data at the best setting", [
            "sample", "--model", model, "--num", "1000", "--out", str(samples), "--format", "npz", "--steps",
            str(steps), "--shard-size", "500", "--tracking-uri", tracking])
        step(f"evaluate the {steps}-NFE samples against the held-out digits", [
            "evaluate", "--samples", str(samples), "--reference", "digits", "--out", str(samples / "metrics.json"),
            "--grid", str(out / f"samples_grid_{steps}nfe.png"), "--tracking-uri", tracking])
        scores[f"imf demo, {steps}-NFE"] = json.loads((samples / "metrics.json").read_text())
    rows = summary_rows(scores, digits_baselines(1000))
    client, _ = connect(tracking)
    version = resolve_version(client, f"{MODEL_NAME}@champion")
    log_summary(tracking, json.loads((runs / name / "imf_run.json").read_text())["mlflow_run_id"], rows, version)
    guidance = json.loads((out / "samples_1nfe" / "sample_plan.json").read_text())["guidance"]
    print(f"\n=== imf demo: done in {time.time() - started:.0f} s\n")
    print(f"1000 samples each against the {len(digits_test_labels())} held-out digits (never trained on); guidance "
          f"omega {guidance['omega']}, interval [{guidance['t_min']}, {guidance['t_max']}]:")
    print(format_summary(rows))
    print(f"\n1-NFE samples (one row per class): {out / 'samples_grid_1nfe.png'}")
    print(f"metric versus omega: {next((out / 'sweep').glob('*_vs_omega.png'), None)}")
    mlflow = Path(sys.executable).parent / "mlflow"
    print(f"MLflow UI:  {mlflow} ui --backend-store-uri {tracking} --host 127.0.0.1  (then open http://127.0.0.1:5000)")
    return 0


def digits_test_labels() -> np.ndarray:
    from ..data.digits import digits

    return digits("test")[1]


def register(steps):
    parser = steps.add_parser("demo", help="run the whole pipeline on the embedded dataset")
    parser.add_argument("--out", default="demo_out")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=None, help="override the demo config's train.max_steps")
    parser.add_argument("--core-only", action="store_true", help="train with imf_core alone (no Ray, no MLflow)")
    parser.add_argument("--seconds", type=float, default=90.0, help="--core-only: training time")

    def run(args):
        if args.workers < 1 or (args.max_steps is not None and args.max_steps < 1) or args.seconds <= 0:
            raise UserError(f"--workers {args.workers} and --max-steps {args.max_steps} must be >= 1, "
                            f"--seconds {args.seconds} > 0")
        Location.of(args.out).check_writable("--out")
        if args.core_only:
            run_core_demo(Path(args.out), seconds=args.seconds)
            return 0
        return run_pipeline_demo(Path(args.out), workers=args.workers, max_steps=args.max_steps)

    parser.set_defaults(func=run)
