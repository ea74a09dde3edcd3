"""`imf evaluate sweep`: one registered model at many guidance settings, without retraining.

For each omega and CFG interval, generate the same class-balanced, per-index seeded images
(1-NFE by default), score them against a reference, log everything to MLflow with a
metric-versus-omega plot, and store the best setting on the registered version, where
`imf sample` finds it when no omega is given.
"""

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from .errors import UserError


def parse_omegas(text: str) -> list[float]:
    try:
        omegas = [float(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise UserError(f"--omegas {text!r}: comma-separated numbers, e.g. 1,1.5,2,4") from None
    if not omegas or min(omegas) < 1:
        raise UserError(f"--omegas {text!r}: give one or more values >= 1")
    return omegas


def parse_intervals(text: str) -> list[tuple[float, float]]:
    intervals = []
    for part in text.split(","):
        try:
            lo, hi = (float(v) for v in part.split(":"))
        except ValueError:
            raise UserError(f"--intervals {text!r}: comma-separated T_MIN:T_MAX pairs, e.g. 0:1,0.3:0.7") from None
        if not 0 <= lo <= hi <= 1:
            raise UserError(f"--intervals: {part} needs 0 <= t_min <= t_max <= 1")
        intervals.append((lo, hi))
    return intervals


def lower_is_better(metric: str) -> bool:
    return not metric.startswith(("cls_acc", "is", "precision", "recall"))


def pick_metric(result: dict, wanted: str | None) -> str:
    if wanted:
        if wanted not in result:
            raise UserError(f"--metric {wanted!r} was not computed; available: {', '.join(result)}")
        return wanted
    for prefix in ("fid", "fd_pixels"):
        for key in result:
            if key.startswith(prefix):
                return key
    return next(iter(result))


def plot(rows, metric, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for interval in sorted({(r["t_min"], r["t_max"]) for r in rows}):
        pts = sorted((r["omega"], r[metric]) for r in rows if (r["t_min"], r["t_max"]) == interval)
        ax.plot(*zip(*pts), marker="o", label=f"[{interval[0]:g}, {interval[1]:g}]")
    ax.set_xlabel("omega (CFG scale)")
    ax.set_ylabel(metric)
    ax.legend(title="interval")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_sweep(args) -> int:
    import torch

    from imf_core import load_model
    from imf_core.codecs import codec_from_description

    from .evaluate import Reference, evaluate_images
    from .registry import model_folder, set_best_guidance
    from .sample import generate_images
    from .tracking import TolerantLogger, connect, experiment_id

    omegas, intervals = parse_omegas(args.omegas), parse_intervals(args.intervals)
    reference = Reference.load(args.reference)
    folder, version = model_folder(args.model, args.tracking_uri)
    config = json.loads((Path(folder) / "config.json").read_text())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = load_model(folder, device=device, v_head=False).eval()
    vae = Path(folder) / "vae"
    codec = codec_from_description(config["codec"], device=device, weights=str(vae) if vae.is_dir() else None)
    classes = list(range(config["num_classes"]))
    indices = list(range(args.num))
    labels = np.asarray(classes)[np.asarray(indices) % len(classes)]
    rows = []
    print(f"imf evaluate sweep: {len(omegas)} omegas x {len(intervals)} intervals, {args.num} images each", flush=True)
    for lo, hi in intervals:
        for omega in omegas:
            plan = {"seed": args.seed, "classes": classes,
                    "guidance": {"omega": omega, "t_min": lo, "t_max": hi, "steps": args.steps}}
            images = generate_images(net, codec, config, plan, indices, args.batch_size, device)
            result = evaluate_images(images, labels, reference=reference, metrics=args.metrics)
            rows.append({"omega": omega, "t_min": lo, "t_max": hi, "steps": args.steps, **result})
            print(f"  omega {omega:5.2f}  interval [{lo:.2f}, {hi:.2f}]  " +
                  "  ".join(f"{k} {v:.4f}" for k, v in result.items()), flush=True)
    metric = pick_metric(rows[0], args.metric)
    best = (min if lower_is_better(metric) else max)(rows, key=lambda r: r[metric])
    guidance = {k: best[k] for k in ("omega", "t_min", "t_max", "steps")}
    print(f"best {metric} {best[metric]:.4f} at omega {best['omega']}, interval [{best['t_min']}, {best['t_max']}]")

    client, uri = connect(args.tracking_uri)
    name = version.name if version else Path(folder).name
    run = client.create_run(experiment_id(client, args.experiment or f"imf/sweeps/{name}", uri),
                            run_name=f"sweep-{name}-v{version.version if version else 'local'}",
                            tags={"imf.model": args.model})
    logger = TolerantLogger(uri, run.info.run_id)
    for step, row in enumerate(rows):
        logger.metrics({k: v for k, v in row.items() if isinstance(v, float)}, step=step)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="imf_sweep_"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps({"metric": metric, "best": guidance, "rows": rows}, indent=1))
    figure = plot(rows, metric, out / f"{metric}_vs_omega.png")
    logger.artifact(out / "sweep.json")
    logger.artifact(figure)
    logger.metrics({f"best_{metric}": best[metric]}, step=len(rows))
    logger.terminate("FINISHED")
    if version is not None:
        set_best_guidance(args.tracking_uri, version.name, version.version, guidance, metric, best[metric])
        print(f"stored on {version.name} version {version.version}: `imf sample` uses it when no --omega is given")
    print(f"plot: {figure}")
    return 0


def add_sweep_parser(actions):
    sweep = actions.add_parser("sweep", help="score one model over guidance settings; store the best on its version")
    sweep.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION, or a model folder")
    sweep.add_argument("--reference", required=True, help="STATS.npz from `imf evaluate reference`, or `digits`")
    sweep.add_argument("--omegas", default="1,1.5,2,3,4,6,8")
    sweep.add_argument("--intervals", default="0:1", help="T_MIN:T_MAX pairs, e.g. 0:1,0.3:0.7")
    sweep.add_argument("--num", type=int, default=1000, help="images per setting")
    sweep.add_argument("--steps", type=int, default=1)
    sweep.add_argument("--seed", type=int, default=0)
    sweep.add_argument("--sweep-metrics", dest="metrics", default="auto", help="metrics to compute (as --metrics)")
    sweep.add_argument("--metric", default=None, help="the metric that picks the best setting (default: FID, "
                                                       "else pixel FD)")
    sweep.add_argument("--experiment", default=None)
    sweep.add_argument("--out", default=None, help="folder for sweep.json and the plot")
    sweep.add_argument("--tracking-uri", dest="tracking_uri", default=argparse.SUPPRESS)
    sweep.set_defaults(func=run_sweep)
    return sweep
