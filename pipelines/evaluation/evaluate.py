"""`imf evaluate`: FID / IS / precision-recall of sample images against a reference, logged to MLflow.

    imf evaluate --samples DIR --reference STATS.npz|digits [--metrics auto|fid,is,pr,fd_pixels,cls_acc,pr_pixels]
    imf evaluate reference --images DIR|digits --out STATS.npz
    imf evaluate sweep --model models:/NAME@ALIAS --reference ... --omegas 1,2,4 --intervals 0:1,0.3:0.7

Samples and images: `*.npz` shards (ADM's format), Parquet shards or image files (see image_sets.py);
references and metric names: scoring.py. Each evaluation is an MLflow run (metrics and a sample grid);
when the samples came from a registered version (the `manifest.json` that `imf sample` writes says
which), the metrics are also recorded on that version, where `imf models show` prints them.
"""

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..storage import Location
from .image_sets import sample_grid, samples_manifest, scan_images
from .inception import WEIGHTS_ENV, inception_extractor
from .scoring import (
    EMBEDDED_REFERENCE,
    INCEPTION_METRICS,
    PIXEL_METRICS,
    Reference,
    build_reference,
    choose_metrics,
    compute_metrics,
    unless_unlabelled,
)
from .set_check import check_image_set


@dataclass
class EvaluateSpec:
    samples: str
    reference: str
    reference_name: str | None = None
    metrics: str = "auto"
    k: int = 3
    out: str | None = None  # also write the metrics to this JSON file
    grid: str | None = None  # also save the sample grid here
    inception_weights: str | None = None
    device: str | None = None
    batch_size: int = 64
    tracking_uri: str | None = None
    experiment: str | None = None


def score_samples(spec: EvaluateSpec) -> dict:
    if spec.k < 1 or spec.batch_size < 1:
        raise UserError(f"--k {spec.k} and --batch-size {spec.batch_size} must be >= 1")
    unknown = [m for m in spec.metrics.split(",")
               if spec.metrics != "auto" and m not in INCEPTION_METRICS + PIXEL_METRICS]
    if unknown:
        raise UserError(f"--metrics: unknown {', '.join(map(repr, unknown))}; choose auto or some of "
                        f"{','.join(INCEPTION_METRICS + PIXEL_METRICS)}")
    reference = Reference.load(spec.reference, spec.reference_name)
    check_image_set(spec.samples, reference, spec.metrics)  # headers and footers, before any weights load
    wants_inception = spec.metrics != "auto" and bool(set(spec.metrics.split(",")) & set(INCEPTION_METRICS))
    extractor = inception_extractor(spec.inception_weights, spec.device, spec.batch_size, wants_inception)
    chosen = choose_metrics(spec.metrics, reference, extractor is not None)
    scan = scan_images(spec.samples, extractor if set(chosen) & set(INCEPTION_METRICS) else None, spec.batch_size)
    return compute_metrics(reference, unless_unlabelled(spec.metrics, chosen, scan.labels), scan, k=spec.k)


def run_evaluate(spec: EvaluateSpec) -> dict:
    for flag, path in (("--out", spec.out), ("--grid", spec.grid)):  # before the scores are computed
        if path:
            Location.of(path).check_writable(flag)
    result = score_samples(spec)
    for key, value in result.items():
        print(f"{key} {value:.6g}")
    if spec.out:
        Location.of(spec.out).write_text(json.dumps(result, indent=2) + "\n")
    with tempfile.TemporaryDirectory(prefix="imf_eval_") as tmp:
        grid = sample_grid(spec.samples, Path(spec.grid or Path(tmp) / "samples_grid.png"))
        log_evaluation(spec, result, grid)
    return result


def log_evaluation(spec: EvaluateSpec, result: dict, grid: Path | None):
    """One MLflow run with the metrics and the grid; the metrics also go on the version the samples came from."""
    from ..models.registry import record_metrics
    from ..tracking import TolerantLogger, connect, experiment_id

    origin = samples_manifest(spec.samples)
    client, uri = connect(spec.tracking_uri or origin.get("tracking_uri"))
    name, version = origin.get("model_name"), origin.get("version")
    source = f"{name} version {version}" if version else origin.get("model") or spec.samples
    experiment = spec.experiment or (f"imf/{name}" if name else "imf/evaluate")
    run = client.create_run(experiment_id(client, experiment, uri), run_name=f"evaluate-{Path(spec.samples).name}",
                            tags={"mlflow.note.content": f"Scores of {source}'s samples ({spec.samples}) against "
                                                         f"{spec.reference}.", "imf.samples": str(spec.samples)})
    logger = TolerantLogger(uri, run.info.run_id)
    logger.params({"samples": spec.samples, "reference": spec.reference, "metrics": spec.metrics, "k": spec.k,
                   **{f"sample.{k}": v for k, v in origin.items() if k in ("num", "seed", "guidance", "model")}})
    logger.metrics(result, step=0)
    if grid is not None:
        logger.artifact(grid)
    logger.terminate("FINISHED")
    if version:
        record_metrics(client, name, version, result, run.info.run_id, origin.get("guidance"))
        print(f"recorded on {name} version {version} (see `imf models show {name}/{version}`)")
    print(f"MLflow run {run.info.run_id} in {uri}")


@dataclass
class ReferenceSpec:
    images: str
    out: str
    name: str | None = None
    center_crop: int | None = None
    no_inception: bool = False
    inception_weights: str | None = None
    device: str | None = None
    batch_size: int = 64


def run_reference(spec: ReferenceSpec):
    Location.of(spec.out).check_writable("--out")
    extractor = None if spec.no_inception else inception_extractor(spec.inception_weights, spec.device,
                                                                    spec.batch_size, required=False)
    if spec.images != EMBEDDED_REFERENCE or Path(spec.images).exists():
        check_image_set(spec.images)
    ref = build_reference(spec.images, spec.name, extractor, crop=spec.center_crop)
    path = ref.save(spec.out)
    parts = [p for p, v in (("Inception statistics", ref.mu), ("images", ref.images), ("labels", ref.labels))
             if v is not None]
    print(f"reference `{ref.name}` ({', '.join(parts) or 'nothing usable'}) -> {path}")


def _run(args):
    from ..cli import spec_from_args
    from .sweep import SweepSpec, run_sweep

    if args.action == "sweep":
        return run_sweep(spec_from_args(SweepSpec, args))
    if args.action == "reference":
        return run_reference(spec_from_args(ReferenceSpec, args))
    if not args.samples or not args.reference:
        raise UserError("give --samples DIR and --reference STATS.npz (or `imf evaluate reference ...`)")
    return run_evaluate(spec_from_args(EvaluateSpec, args))


def register(steps):
    from ..cli import add_shared_flags
    from .sweep import add_sweep_parser

    parser = steps.add_parser("evaluate", help="FID / IS / precision-recall of samples against a reference",
                              description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", help="folder or bucket prefix (s3://...) of sample .npz / .parquet / .png files")
    parser.add_argument("--reference", help="STATS.npz from `imf evaluate reference`, or `digits`")
    parser.add_argument("--reference-name", help="name used in metric keys (default: the reference's own)")
    parser.add_argument("--metrics", default="auto",
                        help=f"auto, or some of {','.join(INCEPTION_METRICS + PIXEL_METRICS)}")
    parser.add_argument("--k", type=int, default=3, help="neighbourhood size for precision/recall")
    parser.add_argument("--out", help="also write the metrics to this JSON file")
    parser.add_argument("--grid", help="also save a grid of the samples (a row per class) to this PNG")
    parser.add_argument("--experiment", default=None, help="MLflow experiment (default imf/<model name>)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    ref = actions.add_parser("reference", help="compute reference statistics from images")
    ref.add_argument("--images", required=True, help="folder of .npz / .parquet / image files, or `digits`")
    ref.add_argument("--out", required=True, help="STATS.npz to write")
    ref.add_argument("--name", help="name used in metric keys (default: the folder's name)")
    ref.add_argument("--center-crop", type=int, help="ADM centre crop of image files to SIZE x SIZE")
    ref.add_argument("--no-inception", action="store_true", help="skip Inception statistics")
    sweep = add_sweep_parser(actions)
    add_shared_flags(parser, address="unused", tracking=True)
    for p, keep in ((parser, False), (ref, True), (sweep, True)):  # accepted either side of the action
        p.add_argument("--inception-weights", default=argparse.SUPPRESS if keep else None,
                       help=f"torch-fidelity's Inception-v3 .pth (or ${WEIGHTS_ENV})")
        p.add_argument("--device", default=argparse.SUPPRESS if keep else None,
                       help="cuda or cpu (default: cuda if available)")
        p.add_argument("--batch-size", type=int, default=argparse.SUPPRESS if keep else 64,
                       help="images per Inception forward")
    parser.set_defaults(func=_run)
