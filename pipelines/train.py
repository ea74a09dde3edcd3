"""`imf train`: distributed iMF training on Ray Train, tracked in MLflow.

The driver validates everything first (config, data folder, worker count, tracking
store, cluster), creates the MLflow run, then fits a TorchTrainer whose workers run
`train_loop.train_loop_per_worker`.
"""

import argparse
import json
import time
from pathlib import Path

from .config import check_workers, load_config, validate
from .errors import UserError
from .shards import latent_dataset, read_manifest
from .tracking import TolerantLogger, connect, experiment_id

RUN_FILE = "imf_run.json"


def log_params(client, run_id, params: dict):
    from mlflow.entities import Param

    items = [Param(k, json.dumps(v) if isinstance(v, (dict, list, tuple)) else str(v)) for k, v in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start:start + 100])


def resolve_resume(resume: str | None, storage: Path, name: str | None):
    """--resume RUN_NAME (a run under --storage) or a checkpoint folder. Returns (run name, checkpoint path)."""
    if not resume:
        return name, None
    path = Path(resume)
    if path.is_dir() and (path / "progress.json").is_file():
        return name, str(path.resolve())
    if not isinstance(storage, Path) or (storage / resume).is_dir():
        return resume, None
    raise UserError(f"--resume {resume!r} is neither a run under {storage} nor a checkpoint folder "
                    "(one holding progress.json)")


def storage_root(storage: str):
    """A local folder (made absolute, as Ray needs) or a URI such as s3://bucket/runs, kept as is."""
    return storage if "://" in storage else Path(storage).resolve()


def prepare(args, cfg=None):
    """Everything that can be checked before any cluster work; returns the pieces of a run."""
    cfg = cfg or load_config(args.config)
    if getattr(args, "model", None):
        cfg.model.name = args.model
        problems = validate(cfg)
        if problems:
            raise UserError("; ".join(problems))
    check_workers(cfg, args.workers)
    data = Path(args.data)
    if not data.is_dir():
        raise UserError(f"data folder {data} not found: run `imf encode --images DIR --out {data}` first")
    manifest = read_manifest(data)
    if cfg.train.flip and not manifest.get("flip"):
        raise UserError(f"train.flip is set but {data} holds no mirrored moments: re-encode with --flip "
                        "or set train.flip: false")
    num_rows = int(manifest["counts"]["encoded"])
    per_worker = cfg.train.batch_size // args.workers
    if num_rows // args.workers < per_worker:
        raise UserError(f"{data} holds {num_rows} images: fewer than one batch of {per_worker} per worker "
                        f"for {args.workers} workers; lower train.batch_size or --workers")
    return cfg, manifest, num_rows


def run_status_actor():
    """A small actor through which rank 0 tells the driver that the loss went non-finite (Result.metrics
    only carries the metrics of the latest checkpoint, and that checkpoint must stay the last good one)."""
    import ray

    @ray.remote(num_cpus=0)
    class RunStatus:
        def __init__(self):
            self.nonfinite_step = None

        def set_nonfinite(self, step):
            self.nonfinite_step = step

        def nonfinite(self):
            return self.nonfinite_step

    return RunStatus.remote()


def build_trainer(args, cfg, manifest, num_rows, run_name, storage, tracking_uri, run_id, resume_path=None,
                  callbacks=None, status=None, checkpoint_score=None):
    """checkpoint_score: (metric, "min"|"max") to keep the best checkpoints rather than the latest."""
    import ray
    from ray.data import DataContext
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from .train_loop import train_loop_per_worker

    data_context = DataContext.get_current()
    data_context.execution_options.preserve_order = True  # a fixed data order per rank, for exact resumes
    data_context.enable_progress_bars = False  # the workers print their own progress lines
    data_context.print_on_execution_start = False  # and Ray Data would announce every epoch's read
    gpus = args.gpus_per_worker if args.gpus_per_worker is not None else (
        1 if ray.cluster_resources().get("GPU", 0) >= args.workers else 0)
    cpus = args.cpus_per_worker or (0.5 if gpus == 0 else 4)
    resources = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    payload = {"config": cfg.to_dict(), "manifest": manifest, "num_rows": num_rows, "tracking_uri": tracking_uri,
               "run_id": run_id, "resume_path": resume_path, "debug_dir": getattr(args, "debug_dir", None), "status": status,
               "data": str(Path(args.data).resolve()), "reference": None}
    if cfg.train.eval_samples:
        from .quick_eval import reference_images

        payload["reference"] = reference_images(args.data, manifest, cfg.train.eval_samples)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=payload,
        scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=gpus > 0, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if gpus else "gloo"),
        datasets={"train": latent_dataset(args.data)},
        run_config=RunConfig(
            name=run_name, storage_path=str(storage), callbacks=callbacks,
            # Train's own INFO lines (one per checkpoint saved) would sit between our progress lines.
            logging_config=LoggingConfig(log_level="WARNING"),
            failure_config=FailureConfig(max_failures=args.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.train.keep_checkpoints,
                **({"checkpoint_score_attribute": checkpoint_score[0], "checkpoint_score_order": checkpoint_score[1]}
                   if checkpoint_score else {})),
        ),
    )


def run_train(args) -> int:
    from .runtime import start_ray

    cfg, manifest, num_rows = prepare(args)
    storage = storage_root(args.storage)
    run_name, resume_path = resolve_resume(args.resume, storage, args.name)
    run_name = run_name or f"imf-{cfg.model.name.replace('/', '')}-{time.strftime('%Y%m%d-%H%M%S')}"
    client, tracking_uri = connect(args.tracking_uri)
    run_file = (storage if isinstance(storage, Path) else Path("imf_runs").resolve()) / run_name / RUN_FILE
    if run_file.is_file():
        run_id = json.loads(run_file.read_text())["mlflow_run_id"]
        client.update_run(run_id, status="RUNNING")
    else:
        dataset = manifest.get("dataset") or Path(args.data).resolve().name
        exp = experiment_id(client, args.experiment or f"imf/{dataset}", tracking_uri)
        run_id = client.create_run(exp, run_name=run_name, tags={"imf.model": cfg.model.name,
                                                                "imf.data": str(Path(args.data).resolve())}).info.run_id
        log_params(client, run_id, {**cfg.flat(), "workers": args.workers, "data": str(Path(args.data).resolve())})
        run_file.parent.mkdir(parents=True, exist_ok=True)
        run_file.write_text(json.dumps({"mlflow_run_id": run_id, "tracking_uri": tracking_uri}))

    ray = start_ray(args.address)
    status = run_status_actor()
    trainer = build_trainer(args, cfg, manifest, num_rows, run_name, storage, tracking_uri, run_id, resume_path,
                            status=status)
    from ray.train import TrainingFailedError

    tracker = TolerantLogger(tracking_uri, run_id)  # the server may have gone during the run
    try:
        result = trainer.fit()
    except TrainingFailedError as err:
        tracker.terminate("FAILED")
        raise UserError(f"training failed after the allowed {args.max_failures} restart(s): {err}") from err
    status_code = finish(tracker, result, tracking_uri, run_name, storage, ray.get(status.nonfinite.remote()))
    if status_code == 0 and args.register and result.checkpoint is not None:
        from .registry import register_checkpoint

        with result.checkpoint.as_directory() as directory:
            version = register_checkpoint(directory, args.register, tracking_uri, manifest, run_id=run_id,
                                          metrics={k: v for k, v in (result.metrics or {}).items()
                                                   if isinstance(v, (int, float))},
                                          config=cfg.to_dict())
        print(f"registered models:/{version.name}/{version.version} (aliases: {', '.join(version.aliases)})")
    return status_code


def finish(tracker, result, tracking_uri, run_name, storage, nonfinite=None) -> int:
    checkpoints = [c.path for c, _ in (result.best_checkpoints or [])]
    for i, path in enumerate(checkpoints):
        tracker.tag(f"checkpoint.{i}", path)
    latest = result.checkpoint.path if result.checkpoint else None
    if latest:
        tracker.tag("checkpoint.latest", latest)
    if nonfinite is not None:
        tracker.terminate("FAILED")
        print(f"imf train: the loss became NaN/Inf at step {nonfinite}; last good checkpoint: {latest or 'none'}. "
              "Lower optim.lr, add optim.grad_clip, or check the data.")
        return 3
    tracker.terminate("FINISHED")
    print(f"run {run_name}: {storage}/{run_name}\nlatest checkpoint: {latest}\nMLflow run {tracker.run_id} in {tracking_uri}")
    if tracking_uri.startswith("sqlite:"):
        print(f"open the MLflow UI with:  mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1")
    return 0


def add_cluster_args(parser):
    parser.add_argument("--address", default=None, help="Ray address: auto, ray://HOST:10001; default a local instance")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI; default sqlite under ./mlruns")


def register(steps):
    parser = steps.add_parser("train", help="train on latent shards with Ray Train, tracked in MLflow")
    parser.add_argument("--data", required=True, help="folder written by `imf encode`")
    parser.add_argument("--config", required=True, help="YAML config (pipelines/configs/*.yaml)")
    parser.add_argument("--model", default=None, help="override model.name, e.g. B/2")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--gpus-per-worker", type=float, default=None, help="default: 1 when the cluster has GPUs")
    parser.add_argument("--cpus-per-worker", type=float, default=None)
    parser.add_argument("--storage", default="imf_runs", help="checkpoint storage path (local folder or URI)")
    parser.add_argument("--name", default=None, help="run name (default imf-<model>-<time>)")
    parser.add_argument("--experiment", default=None, help="MLflow experiment (default imf/<dataset>)")
    parser.add_argument("--max-failures", type=int, default=0, help="worker-group restarts allowed")
    parser.add_argument("--resume", default=None, help="run name under --storage, or a checkpoint folder")
    parser.add_argument("--register", default=None, metavar="NAME",
                        help="register the final EMA weights in the MLflow model registry under NAME")
    add_cluster_args(parser)
    parser.add_argument("--debug-dir", default=None, help=argparse.SUPPRESS)
    parser.set_defaults(func=run_train)
