"""`imf evaluate sweep`: one registered model at many guidance settings, without retraining.

For each omega and CFG interval, generate the same class-balanced, per-index seeded images
(1-NFE by default), score them against a reference, log everything to MLflow with a
metric-versus-omega plot, and store the best setting on the registered version, where
`imf sample` finds it when no omega is given.
"""

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..progress import Progress


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


@dataclass
class SweepSpec:
    model: str
    reference: str
    omegas: str = "1,1.5,2,3,4,6,8"
    intervals: str = "0:1"
    num: int = 1000
    steps: int = 1
    seed: int = 0
    metrics: str = "auto"
    metric: str | None = None
    experiment: str | None = None
    out: str | None = None
    inception_weights: str | None = None
    device: str | None = None
    batch_size: int = 64
    tracking_uri: str | None = None


def score_settings(generator, reference, spec: SweepSpec, omegas, intervals, extractor=None) -> list[dict]:
    """One row per (interval, omega): the guidance and the metrics of spec.num images at that setting."""
    from ..data.images import as_rgb_uint8
    from .scoring import evaluate_images

    indices = np.arange(spec.num)
    labels = indices % generator.num_classes
    rows, progress = [], Progress("sweep", len(omegas) * len(intervals), "settings", every_s=0)
    for lo, hi in intervals:
        for omega in omegas:
            images = generator.images(spec.seed, indices, labels, omega=omega, t_min=lo, t_max=hi, steps=spec.steps,
                                      batch_size=spec.batch_size)
            result = evaluate_images(as_rgb_uint8(images), labels, reference=reference, metrics=spec.metrics,
                                     extractor=extractor)
            rows.append({"omega": omega, "t_min": lo, "t_max": hi, "steps": spec.steps, **result})
            progress.update(len(rows), f"omega {omega:g}, interval [{lo:g}, {hi:g}]: " +
                            "  ".join(f"{k} {v:.4f}" for k, v in result.items()))
    return rows


def run_sweep(spec: SweepSpec) -> dict:
    from imf_core import load_generator

    from ..models.registry import model_folder, record_sweep, set_best_guidance
    from ..tracking import TolerantLogger, connect, experiment_id
    from .inception import inception_extractor
    from .scoring import INCEPTION_METRICS, Reference

    omegas, intervals = parse_omegas(spec.omegas), parse_intervals(spec.intervals)
    if spec.num < 2 or spec.steps < 1 or spec.batch_size < 1:
        raise UserError(f"--num {spec.num} (>= 2), --steps {spec.steps} and --batch-size {spec.batch_size} "
                        "(>= 1) are out of range")
    reference = Reference.load(spec.reference)
    client, uri = connect(spec.tracking_uri)
    folder, version = model_folder(spec.model, uri)
    generator = load_generator(folder, spec.device)
    wants = spec.metrics != "auto" and bool(set(spec.metrics.split(",")) & set(INCEPTION_METRICS))
    extractor = inception_extractor(spec.inception_weights, spec.device, spec.batch_size, wants) \
        if spec.metrics != "auto" or reference.mu is not None else None
    print(f"imf evaluate sweep: {len(omegas)} omegas x {len(intervals)} intervals, {spec.num} images each", flush=True)
    rows = score_settings(generator, reference, spec, omegas, intervals, extractor)
    metric = pick_metric(rows[0], spec.metric)
    best = (min if lower_is_better(metric) else max)(rows, key=lambda r: r[metric])
    guidance = {k: best[k] for k in ("omega", "t_min", "t_max", "steps")}
    print(f"best {metric} {best[metric]:.4f} at omega {best['omega']}, interval [{best['t_min']}, {best['t_max']}]")

    name = version.name if version else Path(folder).name
    run = client.create_run(experiment_id(client, spec.experiment or f"imf/{name}", uri),
                            run_name=f"sweep-{name}-v{version.version if version else 'local'}",
                            tags={"imf.model": spec.model, "mlflow.note.content":
                                  f"Guidance sweep of {spec.model}: {metric} of {spec.num} {spec.steps}-step samples "
                                  f"at {len(rows)} settings against {spec.reference}; best at omega {best['omega']}."})
    logger = TolerantLogger(uri, run.info.run_id)
    logger.params({"model": spec.model, "reference": spec.reference, "num": spec.num, "steps": spec.steps,
                   "omegas": omegas, "intervals": intervals})
    for step, row in enumerate(rows):
        logger.metrics({k: v for k, v in row.items() if isinstance(v, float)}, step=step)
    out = Path(spec.out) if spec.out else Path(tempfile.mkdtemp(prefix="imf_sweep_"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps({"metric": metric, "best": guidance, "rows": rows}, indent=1))
    figure = plot(rows, metric, out / f"{metric}_vs_omega.png")
    for path in (out / "sweep.json", figure):
        logger.artifact(path)
    logger.table(rows, "sweep_table.json")
    logger.metrics({f"best_{metric}": best[metric]}, step=len(rows))
    logger.terminate("FINISHED")
    if version is not None:
        set_best_guidance(client, version.name, version.version, guidance, metric, best[metric])
        record_sweep(client, version, rows, figure, run.info.run_id)
        print(f"stored on {version.name} version {version.version}: `imf sample` uses it when no --omega is given")
    print(f"plot: {figure}")
    return {"metric": metric, "best": guidance, "rows": rows}


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
    sweep.add_argument("--experiment", default=argparse.SUPPRESS, help="MLflow experiment (default imf/<model name>)")
    sweep.add_argument("--out", default=None, help="folder for sweep.json and the plot")
    sweep.add_argument("--tracking-uri", dest="tracking_uri", default=argparse.SUPPRESS)
    return sweep
