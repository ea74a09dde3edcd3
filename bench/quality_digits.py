"""iMF, original MeanFlow and flow matching on the digits at one wall-clock budget: sample quality.

Each objective trains the demo config's network (pipelines/configs/demo.yaml) with the same
`TrainState.step` the pipeline runs, in this process, for the same number of seconds; then its EMA
network's samples (1000, class-balanced) are scored against the 596 held-out digits at 1, 2 and 4
NFE, and flow matching also at 32 (the multi-step reference). iMF is scored at a few omegas (the
best FD is shown); MF and FM carry no guidance input (omega 1). Above them: real training digits (the
floor) and each class's mean image (no diversity). No assertion: a table to read.
--jvp adds a row per way of taking du/dt (iMF and MF), --seeds a row per training seed (weights, draws,
data order), --steps trains a fixed number of steps instead of a time budget.

    OMP_NUM_THREADS=1 python bench/quality_digits.py --seconds 240
    OMP_NUM_THREADS=1 python bench/quality_digits.py --objectives iMF --steps 3000 --nfe 1 \
        --jvp forward_ad,finite_difference --seeds 0,1      # the tangents' rows in bench/RESULTS.md
"""

import argparse
import time
from pathlib import Path

import torch

from imf_core import draw_step, generate, step_generator
from imf_core.codecs import PixelCodec
from pipelines.config import load_config
from pipelines.data.digits import digits
from pipelines.data.images import as_rgb_uint8
from pipelines.evaluation.scoring import digits_baselines, digits_reference, evaluate_images
from pipelines.train.state import TrainState

CONFIG = Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "demo.yaml"
KEYS = ("fd_pixels_digits_test", "precision_k3_pixels_digits_test", "recall_k3_pixels_digits_test")
OBJECTIVES = {  # name: (config overrides, NFEs scored, omegas scored)
    "iMF": ([], (1, 2, 4), (1.0, 1.25, 1.5, 2.0)),
    "MeanFlow": (["objective.kind=mf", "objective.mf_kappa=0.0", "draws.ratio_r_neq_t=0.25"], (1, 2, 4), (1.0,)),
    "flow matching": (["objective.kind=fm"], (1, 2, 4, 32), (1.0,)),
}


def train(cfg, seconds: float, seed: int = 0, steps: int | None = None) -> tuple[TrainState, int]:
    pixels, labels = digits("train")
    x = torch.tensor(pixels, dtype=torch.float32)[:, None] / 127.5 - 1
    y = torch.as_tensor(labels)
    state = TrainState(cfg, (1, 8, 8), 10, "cpu")
    g, batch, start = torch.Generator().manual_seed(seed), cfg.train.batch_size, time.time()
    order, at = torch.randperm(len(x), generator=g), 0
    while (state.progress.step < steps) if steps else (time.time() - start < seconds):  # not the config's max_steps
        if at + batch > len(x):
            order, at = torch.randperm(len(x), generator=g), 0
        rows, at = order[at:at + batch], at + batch
        step = state.progress.step
        draws = draw_step(batch, (1, 8, 8), state.draw_cfg, step_generator(cfg.train.seed, step))
        state.step(x[rows], y[rows], draws, state.learning_rate(len(x) // batch))
    return state, state.progress.step


def score(state: TrainState, nfe: int, omega: float, instantaneous: bool) -> dict:
    net = state.model.__class__(**state.model.config).eval()
    net.load_state_dict(state.model.state_dict())
    state.ema.copy_to(net)
    labels = torch.arange(1000) % 10
    noise = torch.randn((1000, 1, 8, 8), generator=torch.Generator().manual_seed(123))
    images = generate(net, PixelCodec(1), noise, labels, omega=omega, steps=nfe, instantaneous=instantaneous)
    return evaluate_images(as_rgb_uint8(images), labels.numpy(), reference=digits_reference(),
                           metrics="fd_pixels,pr_pixels")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=240.0, help="training time of each objective")
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--set", action="append", default=[], help="config override for every objective")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--objectives", default=",".join(OBJECTIVES), help=f"a subset of {', '.join(OBJECTIVES)}")
    parser.add_argument("--jvp", default="forward_ad", help="iMF and MF: forward_ad and/or finite_difference")
    parser.add_argument("--seeds", default="0", help="training seeds, comma-separated: a row per seed")
    parser.add_argument("--steps", type=int, default=None, help="train this many steps instead of --seconds")
    parser.add_argument("--nfe", default=None, help="score only these NFEs, e.g. 1")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    budget = f"{args.steps} steps" if args.steps else f"steps in {args.seconds:.0f} s"
    print(f"{'':44s} {'NFE':>4s} {'omega':>6s} {'pixel FD':>9s} {'precision':>10s} {'recall':>7s}  ({budget}, "
          f"training seconds)")
    for name, result in digits_baselines(1000).items():
        print(f"{name + ' (baseline)':44s} {'':>4s} {'':>6s} " + " ".join(f"{result[k]:{w}.3f}" for k, w in
                                                                       zip(KEYS, (9, 10, 7))))
    for name in args.objectives.split(","):
        overrides, nfes, omegas = OBJECTIVES[name]
        nfes = [n for n in nfes if args.nfe is None or str(n) in args.nfe.split(",")]
        for jvp in (args.jvp.split(",") if name != "flow matching" else ["forward_ad"]):
            for seed in (int(s) for s in args.seeds.split(",")):
                cfg = load_config(args.config, [*overrides, *args.set, f"objective.jvp={jvp}", f"train.seed={seed}"])
                start = time.time()
                state, steps = train(cfg, args.seconds, seed, args.steps)
                seconds = time.time() - start
                label = f"{name} ({jvp.replace('_', ' ')}), seed {seed}" if name != "flow matching" else name
                for nfe in nfes:
                    rows = [(omega, score(state, nfe, omega, instantaneous=name == "flow matching"))
                            for omega in omegas]
                    omega, best = min(rows, key=lambda row: row[1][KEYS[0]])
                    print(f"{label:44s} {nfe:4d} {omega:6.2f} " + " ".join(f"{best[k]:{w}.3f}" for k, w in
                                                                           zip(KEYS, (9, 10, 7))) +
                          f"  ({steps} steps, {seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
