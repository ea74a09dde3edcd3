"""`imf train`: distributed iMF training on Ray Train, tracked in MLflow.

The driver validates everything first (config and overrides, data folder, worker count, tracking
store, cluster), creates the MLflow run, then fits a TorchTrainer whose workers run
`worker.train_loop_per_worker`. A latent set whose share per worker fits in
`train.data_in_memory_gb` is read by each worker once (no Ray Data dataset at all); a larger one
is streamed through `get_dataset_shard`.
"""

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import hooks
from ..config import Assignment, TrainConfig, apply_overrides, check_workers, config_from_dict, load_config
from ..data.latent_check import check_latent_set
from ..data.shards import latent_dataset
from ..errors import UserError
from ..runtime import probe_cluster
from ..storage import Location
from ..tracking import TolerantLogger, connect, experiment_id, log_params
from .batches import share_bytes
from .payload import WorkerPayload
from .preemption import PREEMPTED, DriverStop
from .schedule import total_steps

RUN_FILE = "imf_run.json"


@dataclass
class TrainSpec:
    """What `imf train` (and each Tune trial) is asked to run."""
    data: str
    config: str | None = None  # a YAML path; tune passes `raw` instead
    raw: dict | None = None
    set: list = field(default_factory=list)  # SECTION.KEY=VALUE overrides
    model: str | None = None
    max_steps: int | None = None
    workers: int = 1
    gpus_per_worker: float | None = None
    cpus_per_worker: float | None = None
    storage: str = "imf_runs"
    name: str | None = None
    experiment: str | None = None
    max_failures: int = 0
    placement_strategy: str = "PACK"  # or SPREAD: workers on as many nodes as possible
    resume: str | None = None
    register: str | None = None
    address: str | None = None
    tracking_uri: str | None = None

    def overrides(self) -> list[str]:
        """--set, with --model and --max-steps as the assignments they stand for."""
        extra = [Assignment(f"model.name={self.model}", f"--model {self.model}")] if self.model else []
        steps = ([Assignment(f"train.max_steps={self.max_steps}", f"--max-steps {self.max_steps}")]
                 if self.max_steps is not None else [])
        return list(self.set or []) + extra + steps

    def training_config(self) -> TrainConfig:
        if self.raw is not None:
            return config_from_dict(apply_overrides(self.raw, self.overrides()), self.overrides())
        if not self.config:
            raise UserError("give --config CONFIG.yaml (pipelines/configs/ holds one per model size)")
        return load_config(self.config, self.overrides())


@dataclass
class Prepared:
    cfg: TrainConfig
    manifest: dict
    num_rows: int

    @property
    def dataset(self) -> str:
        return self.manifest.get("dataset") or Path(self.manifest.get("images", "latents")).name


def prepare(spec: TrainSpec) -> Prepared:
    """Everything that can be checked before any cluster work."""
    if spec.max_failures < 0:
        raise UserError(f"--max-failures {spec.max_failures} must be >= 0")
    cfg = spec.training_config()
    check_workers(cfg, spec.workers)
    data = Location.of(spec.data)
    if not data.is_dir():
        raise UserError(f"data folder {data} not found: run `imf encode --images DIR --out {data}` first")
    manifest = check_latent_set(data, cfg.model)  # every shard's footer, and the model's patch size
    if cfg.train.flip and not manifest.get("flip"):
        raise UserError(f"train.flip is set but {data} holds no mirrored moments: re-encode with --flip "
                        "or set train.flip: false")
    num_rows = int(manifest["counts"]["encoded"])
    per_worker = cfg.train.batch_size // spec.workers
    if num_rows // spec.workers < per_worker:
        raise UserError(f"{data} holds {num_rows} images: fewer than one batch of {per_worker} per worker "
                        f"for {spec.workers} workers; lower train.batch_size or --workers")
    probe_cluster(spec.address)
    return Prepared(cfg, manifest, num_rows)


def resolve_resume(resume: str | None, storage, name: str | None):
    """--resume RUN_NAME (a run under --storage) or a checkpoint folder. Returns (run name, checkpoint path)."""
    if not resume:
        return name, None
    path = Path(resume)
    if "://" not in resume and path.is_dir() and (path / "progress.json").is_file():
        return name, str(path.resolve())
    if "/" not in resume and Location.of(storage).join(resume).is_dir():
        return resume, None
    raise UserError(f"--resume {resume!r} is neither a run under {storage} nor a checkpoint folder "
                    "(one holding progress.json)")


def storage_root(storage: str):
    """A local folder (made absolute, as Ray needs) or a URI such as s3://bucket/runs, kept as is."""
    return storage if "://" in storage else Path(storage).resolve()


def ray_storage(storage) -> dict:
    """RunConfig's storage_path (and storage_filesystem for a URI: the endpoint of --endpoint-url /
    AWS_ENDPOINT_URL, keys from each node's environment)."""
    if isinstance(storage, Path):
        return {"storage_path": str(storage)}
    location = Location.of(storage)
    return {"storage_path": location.path, "storage_filesystem": location.fs}


def run_status_actor():
    """A small actor between the driver and rank 0: rank 0 tells that the loss went non-finite (Result.metrics
    only carries the metrics of the latest checkpoint, and that checkpoint must stay the last good one) or that
    the run stopped for a SIGTERM; the driver asks the workers to stop (preemption.py)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # On the driver's node (as Ray Train's controller): the loss of another node leaves it alive.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)

    @ray.remote(num_cpus=0, scheduling_strategy=here)
    class RunStatus:
        def __init__(self):
            self.nonfinite_step = self.preempted_step = self.failed_read = None
            self.stop = False

        def set_nonfinite(self, step):
            self.nonfinite_step = step

        def nonfinite(self):
            return self.nonfinite_step

        def request_stop(self):  # the driver got SIGTERM
            self.stop = True

        def stop_requested(self):
            return self.stop

        def set_preempted(self, step):
            self.preempted_step = step

        def preempted(self):
            return self.preempted_step

        def set_read_failure(self, message):  # a rank's read of a shard failed (read_guard.py)
            self.failed_read = self.failed_read or message

        def read_failure(self):
            return self.failed_read

    return RunStatus.remote()


def ordered_ingest():
    """Train's ingest options for the streamed latents, with a fixed order per rank (exact resumes)."""
    import warnings

    from ray.train import DataConfig

    # Ray's copy of its own defaults warns of a field it sets itself (exclude_resources)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return options


def worker_resources(spec: TrainSpec) -> tuple[float, float]:
    """(GPUs, CPUs) per training worker: one GPU each when the cluster has enough, else half a CPU each."""
    import ray

    gpus = spec.gpus_per_worker if spec.gpus_per_worker is not None else (
        1 if ray.cluster_resources().get("GPU", 0) >= spec.workers else 0)
    return gpus, spec.cpus_per_worker or (0.5 if gpus == 0 else 4)


def build_trainer(spec: TrainSpec, run: Prepared, run_name, storage, tracking_uri, run_id, resume_path=None,
                  callbacks=None, status=None, checkpoint_score=None):
    """checkpoint_score: (metric, "min"|"max") to keep the best checkpoints rather than the latest."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from .process_group import OneMachineTorchConfig
    from .worker import train_loop_per_worker

    gpus, cpus = worker_resources(spec)
    cfg = run.cfg
    in_memory = share_bytes(run.manifest, spec.workers) <= cfg.train.data_in_memory_gb * 2**30
    reference = None
    if cfg.train.eval_samples:
        from .monitors import reference_images

        reference = reference_images(spec.data, run.manifest, cfg.train.eval_samples)
    payload = WorkerPayload(cfg, run.manifest, run.num_rows, in_memory, Location.of(spec.data), status=status,
                            tracking_uri=tracking_uri, run_id=run_id, resume_path=resume_path, reference=reference,
                            hooks=hooks.current())
    score = {"checkpoint_score_attribute": checkpoint_score[0], "checkpoint_score_order": checkpoint_score[1]} \
        if checkpoint_score else {}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"payload": payload},
        scaling_config=ScalingConfig(num_workers=spec.workers, use_gpu=gpus > 0,
                                     placement_strategy=spec.placement_strategy,
                                     resources_per_worker={"CPU": cpus, **({"GPU": gpus} if gpus else {})}),
        torch_config=OneMachineTorchConfig(backend="nccl" if gpus else "gloo"),  # loopback on one machine
        datasets={} if in_memory else {"train": latent_dataset(spec.data)},
        dataset_config=DataConfig(execution_options=None if in_memory else ordered_ingest()),
        run_config=RunConfig(
            name=run_name, **ray_storage(storage), callbacks=callbacks,
            # Train's own INFO lines (one per checkpoint saved) would sit between our progress lines.
            logging_config=LoggingConfig(log_level="WARNING"),
            failure_config=FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints, **score),
        ),
    )


def describe_run(spec: TrainSpec, run: Prepared) -> str:
    """One sentence for the MLflow run page (mlflow.note.content)."""
    t = run.cfg.train
    per_epoch, steps = total_steps(run.cfg, run.num_rows, spec.workers)
    return (f"{run.cfg.objective.kind.upper()} training of {run.cfg.model.name} on {run.dataset} "
            f"({run.num_rows} latents from {Location.of(spec.data)}): {steps} steps of {t.batch_size} images "
            f"({steps / max(per_epoch, 1):.3g} epochs) on {spec.workers} worker(s), lr {run.cfg.optim.lr:g}"
            + (f"; overrides: {', '.join(spec.overrides())}" if spec.overrides() else "") + ".")


def open_run(spec: TrainSpec, run: Prepared, run_name: str, storage, client, tracking_uri) -> str:
    """The run's MLflow run id: the one a resumed run already has, or a new run with the config as params."""
    run_file = Location.of(storage).join(run_name, RUN_FILE)
    if run_file.is_file():
        run_id = json.loads(run_file.read_text())["mlflow_run_id"]
        client.update_run(run_id, status="RUNNING")
        return run_id
    model = run.cfg.model.name.replace("/", "-")
    exp = experiment_id(client, spec.experiment or f"imf/{run.dataset}/{model}", tracking_uri)
    data = str(Location.of(spec.data))
    run_id = client.create_run(exp, run_name=run_name, tags={
        "imf.model": run.cfg.model.name, "imf.data": data, "mlflow.note.content": describe_run(spec, run),
        "imf.overrides": json.dumps(spec.overrides())}).info.run_id
    log_params(client, run_id, {**run.cfg.flat(), "workers": spec.workers, "data": data,
                                "overrides": spec.overrides()})
    run_file.write_text(json.dumps({"mlflow_run_id": run_id, "tracking_uri": tracking_uri}))
    return run_id


def run_train(spec: TrainSpec) -> int:
    from ray.train import TrainingFailedError

    from ..runtime import start_ray

    run = prepare(spec)
    storage = storage_root(spec.storage)
    Location.of(storage).check_writable("--storage")
    run_name, resume_path = resolve_resume(spec.resume, storage, spec.name)
    run_name = run_name or f"imf-{run.cfg.model.name.replace('/', '')}-{time.strftime('%Y%m%d-%H%M%S')}"
    client, tracking_uri = connect(spec.tracking_uri)
    ray = start_ray(spec.address)
    run_id = open_run(spec, run, run_name, storage, client, tracking_uri)
    tracker = TolerantLogger(tracking_uri, run_id)  # the server may have gone during the run
    try:
        status = run_status_actor()
        trainer = build_trainer(spec, run, run_name, storage, tracking_uri, run_id, resume_path, status=status)
        with DriverStop(status) as stop:
            result = trainer.fit()
    except TrainingFailedError as err:
        tracker.terminate("FAILED")
        raise UserError(f"training failed after the allowed {spec.max_failures} restart(s): {err}") from err
    except KeyboardInterrupt:  # a signal before the workers ran (or a second Ctrl-C): nothing to checkpoint
        tracker.terminate("KILLED")
        raise
    failed_read = ray.get(status.read_failure.remote())
    if failed_read is not None:
        raise damaged_during_run(tracker, result, run_name, storage, failed_read)
    preempted = ray.get(status.preempted.remote())
    if preempted is not None:
        return stopped_for_preemption(tracker, result, run_name, storage, preempted, stop.received)
    code = finish(tracker, result, tracking_uri, run_name, storage, ray.get(status.nonfinite.remote()))
    if code == 0 and spec.register and result.checkpoint is not None:
        register_result(spec, run, result, tracking_uri, run_id)
    return code


def register_result(spec: TrainSpec, run: Prepared, result, tracking_uri, run_id):
    from ..models.registry import register_checkpoint

    # the state it was registered at: its step, the readable curves, and quick_fd where measured
    metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))
               and (k in ("step", "mse_u", "mse_v") or k.startswith("quick_fd"))}
    with result.checkpoint.as_directory() as directory:
        version = register_checkpoint(directory, spec.register, tracking_uri, run.manifest, run_id=run_id,
                                      metrics=metrics, config=run.cfg.to_dict())
    print(f"registered models:/{version.name}/{version.version} (aliases: {', '.join(version.aliases)})")


def as_uri(storage, path: str) -> str:
    """A checkpoint path as Ray reports it (inside its filesystem) -> the URI a user passes on (s3://...)."""
    scheme = str(storage).split("://")[0] if "://" in str(storage) else None
    return f"{scheme}://{path}" if scheme and "://" not in path else path


def stopped_for_preemption(tracker, result, run_name, storage, step, signal_name=None) -> int:
    latest = as_uri(storage, result.checkpoint.path) if result.checkpoint else None
    tracker.tag("checkpoint.latest", latest)
    tracker.tag("imf.preempted_at_step", step)
    tracker.terminate("KILLED")
    how = "stopped (Ctrl-C)" if signal_name == "Ctrl-C" else "preempted (SIGTERM)"  # SIGTERM: driver or a worker
    print(f"imf train: {how} after step {step}; checkpoint {latest}. Continue with the same "
          f"command and --resume {run_name}.")
    return PREEMPTED


def damaged_during_run(tracker, result, run_name, storage, message: str) -> UserError:
    latest = as_uri(storage, result.checkpoint.path) if result.checkpoint else None
    tracker.terminate("FAILED")
    resume = f"continue with the same command and --resume {run_name}" if latest else "then run it again"
    return UserError(f"{message}; the last good checkpoint, {latest or 'none yet'}, is kept as it was: {resume}")


def finish(tracker, result, tracking_uri, run_name, storage, nonfinite=None) -> int:
    checkpoints = [as_uri(storage, c.path) for c, _ in (result.best_checkpoints or [])]
    for i, path in enumerate(checkpoints):
        tracker.tag(f"checkpoint.{i}", path)
    latest = as_uri(storage, result.checkpoint.path) if result.checkpoint else None
    if latest:
        tracker.tag("checkpoint.latest", latest)
    if nonfinite is not None:
        tracker.terminate("FAILED")
        print(f"imf train: the loss became NaN/Inf at step {nonfinite}; last good checkpoint: {latest or 'none'}. "
              "Lower optim.lr, add optim.grad_clip, or check the data.")
        return 3
    tracker.terminate("FINISHED")
    print(f"run {run_name}: {storage}/{run_name}\nlatest checkpoint: {latest}\n"
          f"MLflow run {tracker.run_id} in {tracking_uri}")
    if tracking_uri.startswith("sqlite:"):
        print(f"open the MLflow UI with:  mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1")
    return 0


def add_run_flags(parser):
    """Flags `imf train` and `imf tune` share: data, workers and their resources, config overrides."""
    from ..cli import add_shared_flags

    parser.add_argument("--data", required=True, help="folder or bucket prefix (s3://...) written by `imf encode`")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (read as YAML), e.g. --set optim.lr=3e-4; repeatable")
    parser.add_argument("--workers", type=int, default=1, help="training workers (per trial, for tune)")
    parser.add_argument("--gpus-per-worker", type=float, default=None, help="default: 1 when the cluster has GPUs")
    parser.add_argument("--cpus-per-worker", type=float, default=None)
    parser.add_argument("--max-failures", type=int, default=0, help="worker-group restarts allowed")
    parser.add_argument("--placement-strategy", choices=["PACK", "SPREAD"], default="PACK",
                        help="PACK: workers on as few nodes as possible (default); SPREAD: on as many as possible, "
                             "so that losing one node takes fewer of them")
    parser.add_argument("--experiment", default=None, help="MLflow experiment (default imf/<dataset>/<model>)")
    add_shared_flags(parser, address=True, tracking=True, storage="imf_runs")


def register(steps):
    from ..cli import spec_from_args

    parser = steps.add_parser("train", help="train on latent shards with Ray Train, tracked in MLflow")
    parser.add_argument("--config", required=True, help="YAML config (pipelines/configs/*.yaml)")
    parser.add_argument("--model", default=None, help="override model.name, e.g. B/2")
    parser.add_argument("--max-steps", type=int, default=None, help="override train.max_steps")
    parser.add_argument("--name", default=None, help="run name (default imf-<model>-<time>)")
    parser.add_argument("--resume", default=None, help="run name under --storage (a folder or s3://...), or a "
                        "local checkpoint folder")
    parser.add_argument("--register", default=None, metavar="NAME",
                        help="register the final EMA weights in the MLflow model registry under NAME")
    add_run_flags(parser)
    parser.set_defaults(func=lambda args: run_train(spec_from_args(TrainSpec, args)))
