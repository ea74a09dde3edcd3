"""`imf tune`: Ray Tune over the training driver, with ASHA early stopping on `quick_fd`.

Each trial is a Tune function that builds and fits a TorchTrainer (tune/trial.py) and logs to an
MLflow child run; the driver owns the parent run, writes its summary table and plot, and registers
the best trial's best checkpoint (`challenger`, and `champion` when the model has none yet).
Everything that can be checked (space, configs, data, workers, tracking store) is checked before Ray starts.
"""

import contextlib
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from pipelines.config import config_from_dict
from pipelines.errors import UserError
from pipelines.storage import Location
from pipelines.tracking import connect, experiment_id, log_params
from pipelines.train.driver import TrainSpec, prepare, ray_storage, storage_root, worker_resources
from pipelines.train.schedule import total_steps

from .space import apply, check, load_space

TRIAL_CPU = 0.1  # the Tune function itself; its TorchTrainer's workers hold their own resources


@dataclass
class TuneSpec:
    data: str
    space: str
    trials: int
    max_steps: int
    config: str | None = None
    set: list = field(default_factory=list)
    evals: int = 4
    eval_samples: int = 256
    grace: int | None = None
    reduction_factor: float = 2.0
    max_concurrent: int | None = None
    workers: int = 1
    gpus_per_worker: float | None = None
    cpus_per_worker: float | None = None
    max_failures: int = 0
    placement_strategy: str = "PACK"
    storage: str = "imf_runs"
    name: str | None = None
    experiment: str | None = None
    register: str | None = None
    seed: int = 0
    address: str | None = None
    tracking_uri: str | None = None

    def trial_spec(self, raw: dict | None, **changes) -> TrainSpec:
        """The TrainSpec of one trial: this sweep's data and resources, a config given as a dict."""
        spec = TrainSpec(data=self.data, raw=raw, workers=self.workers, gpus_per_worker=self.gpus_per_worker,
                         cpus_per_worker=self.cpus_per_worker, max_failures=self.max_failures,
                         placement_strategy=self.placement_strategy)
        return replace(spec, **changes)


def sweep_settings(max_steps: int, evals: int, eval_samples: int) -> dict:
    """What the sweep sets in every trial's config: `evals` quick_fd evaluations, each with a checkpoint.
    A trial keeps its best checkpoint by quick_fd (the one a sweep registers) and Ray Train also keeps
    the latest (for restarts after a failure): at most two per trial, whatever the number of evals."""
    every = max(1, max_steps // evals)
    return {"train.max_steps": max_steps, "train.eval_every": every, "train.checkpoint_every": every,
            "train.eval_samples": eval_samples, "train.keep_checkpoints": 1}


def concurrency(args: TuneSpec, gpus: float, cpus: float) -> int:
    """Trials at once: as many as the cluster holds; one on a machine without GPUs, where concurrent
    CPU trials starve Ray Data's read tasks."""
    import ray

    total = ray.cluster_resources()
    need = {"CPU": TRIAL_CPU + args.workers * cpus, "GPU": args.workers * gpus}
    short = [f"{need[k]:g} {k} (the cluster has {total.get(k, 0):g})" for k in need if need[k] > total.get(k, 0)]
    if short:
        raise UserError(f"one trial needs {' and '.join(short)}: lower --workers, --cpus-per-worker or "
                        "--gpus-per-worker, or use a larger cluster")
    if args.max_concurrent:
        return args.max_concurrent
    if total.get("GPU", 0) == 0:
        return 1
    return max(1, min(int(total[k] // need[k]) for k in need if need[k] > 0))


def check_args(args: TuneSpec):
    for flag, value in (("--trials", args.trials), ("--max-steps", args.max_steps), ("--evals", args.evals),
                        ("--eval-samples", args.eval_samples), ("--workers", args.workers)):
        if value < 1:
            raise UserError(f"{flag} {value} must be >= 1")
    if args.evals > args.max_steps:
        raise UserError(f"--evals {args.evals} exceeds --max-steps {args.max_steps}: at most one evaluation per step")
    if args.reduction_factor <= 1:
        raise UserError(f"--reduction-factor {args.reduction_factor} must be > 1 (ASHA keeps 1/factor per rung)")
    if args.grace is not None and not 1 <= args.grace <= args.max_steps:
        raise UserError(f"--grace {args.grace} must lie in [1, --max-steps {args.max_steps}]")


def run_tune(args: TuneSpec) -> int:
    from pipelines.runtime import probe_cluster, start_ray

    space = load_space(args.space, args.config, args.set)  # first: a wrong --space is the problem to name
    check_args(args)
    probe_cluster(args.address)
    settings = sweep_settings(args.max_steps, args.evals, args.eval_samples)
    space.base = apply(space.base, settings)
    check(space, args.workers, args.seed)
    grid = space.grid_size()
    if args.trials % grid:
        raise UserError(f"--trials {args.trials}: {space.path} has grid entries with {grid} combinations; "
                        f"give a multiple of {grid}")
    run = prepare(args.trial_spec(space.base))
    storage = storage_root(args.storage)
    sweep = args.name or f"tune-{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    model_name = args.register or f"imf-{space.name}"
    client, tracking_uri = connect(args.tracking_uri)
    data = str(Location.of(args.data))
    model = run.cfg.model.name.replace("/", "-")
    exp = experiment_id(client, args.experiment or f"imf/{run.dataset}/{model}", tracking_uri)
    parent = open_parent(client, exp, sweep, space, args, settings, model_name, run, data)
    print(f"sweep {sweep}: {args.trials} trial(s) of {space.path.name} ({', '.join(space.entries)}), "
          f"{args.max_steps} steps each, quick_fd every {settings['train.eval_every']} steps; "
          f"MLflow parent run {parent}", flush=True)

    try:
        start_ray(args.address)
        gpus, cpus = worker_resources(args.trial_spec(space.base))
        trial = asdict(args.trial_spec(None, data=data, gpus_per_worker=gpus, cpus_per_worker=cpus))
        setup = {"base": space.base, "sweep": sweep, "tracking_uri": tracking_uri, "experiment_id": exp,
                 "parent_run_id": parent, "train_storage": _join(storage, sweep, "train"), "spec": trial}
        grace = args.grace or settings["train.eval_every"]
        results = fit(space, setup, args, storage, sweep, grace, concurrency(args, gpus, cpus))
        status = finish(client, tracking_uri, exp, parent, space, results, args, run.num_rows, model_name,
                        run.manifest, storage)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (SweepStop)
        close_open_runs(client, exp, parent, "KILLED")
        raise
    except BaseException:
        close_open_runs(client, exp, parent, "FAILED")
        raise
    client.set_terminated(parent, "FINISHED" if status == 0 else "FAILED")
    return status


def open_parent(client, exp, sweep, space, args: TuneSpec, settings, model_name, run, data) -> str:
    """The sweep's parent run: its settings as params and the search space file itself as an artifact."""
    grace = args.grace or settings["train.eval_every"]
    note = (f"Ray Tune sweep of {space.path.name} over {', '.join(space.entries)}: {args.trials} trials of "
            f"{run.cfg.model.name} on {run.dataset}, up to {args.max_steps} steps each, ASHA on quick_fd.")
    parent = client.create_run(exp, run_name=sweep, tags={
        "imf.tune.space": space.path.name, "imf.data": data, "imf.model": run.cfg.model.name,
        "mlflow.note.content": note}).info.run_id
    log_params(client, parent, {
        "space": space.path.name, "trials": args.trials, "max_steps": args.max_steps, "evals": args.evals,
        "eval_samples": args.eval_samples, "metric": "quick_fd", "asha.grace": grace,
        "asha.reduction_factor": args.reduction_factor, "workers": args.workers, "seed": args.seed,
        "overrides": list(args.set or []), "registered_model": model_name,
        **{f"space.{k}": v for k, v in space.entries.items()}})
    client.log_artifact(parent, str(space.path), "search_space")
    return parent


def _join(storage, *parts):
    return storage.joinpath(*parts) if isinstance(storage, Path) else "/".join([str(storage).rstrip("/"), *parts])


def fit(space, setup, args, storage, sweep, grace, max_concurrent):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    from .trial import METRIC, run_trial

    print(f"running up to {max_concurrent} trial(s) at a time", flush=True)
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup), {"cpu": TRIAL_CPU})
    scheduler = ASHAScheduler(time_attr="step", max_t=args.max_steps, grace_period=grace,
                              reduction_factor=args.reduction_factor)
    tuner = tune.Tuner(
        trainable,
        param_space={"params": space.domains()},
        tune_config=tune.TuneConfig(metric=METRIC, mode="min", scheduler=scheduler,
                                    num_samples=args.trials // space.grid_size(),
                                    # Tune ignores max_concurrent_trials when given a search_alg instance.
                                    search_alg=BasicVariantGenerator(max_concurrent=max_concurrent,
                                                                     random_state=args.seed)),
        # verbose 0: Tune's status tables (which cut column names and round small values to 0.) give way to
        # one progress line per finished trial; the full table is printed and logged at the end.
        run_config=tune.RunConfig(name=sweep, **ray_storage(storage), verbose=0,
                                  callbacks=[trial_progress(args.trials)]),
    )
    # Tune's newer console output prints its configuration box even at verbose 0; the classic one does not.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    with SweepStop():
        return tuner.fit()


class SweepStop:
    """While Tune runs the trials, SIGTERM and Ctrl-C end the sweep the way Tune ends one (its stop signal, SIGUSR1:
    the trials stopped, its state saved), then raise as the signal would have: Stopped (runtime) for SIGTERM,
    KeyboardInterrupt for Ctrl-C. A second Ctrl-C raises at once."""

    def __init__(self):
        self.received, self.previous = None, {}

    def _handler(self, signum, frame):
        from pipelines.runtime import Stopped

        if self.received is None:
            self.received = signum
            print(f"imf tune: {'SIGTERM' if signum == signal.SIGTERM else 'Ctrl-C'} received; stopping the trials "
                  "(Ctrl-C again to stop at once)", flush=True)
            if signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None):  # Tune's handler is in place
                os.kill(os.getpid(), signal.SIGUSR1)
                return
            raise Stopped if signum == signal.SIGTERM else KeyboardInterrupt
        if signum == signal.SIGINT:
            raise KeyboardInterrupt

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # Tune's own would end the sweep with no status of ours
            self.previous = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, exc_type, exc, tb):
        from pipelines.runtime import Stopped

        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        if exc_type is None and self.received is not None:
            raise Stopped if self.received == signal.SIGTERM else KeyboardInterrupt
        return False


def close_open_runs(client, exp, parent, status):
    """The parent run and its trials' runs still RUNNING end with `status`."""
    children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}' and attributes.status = 'RUNNING'")
    for run_id in [parent, *(child.info.run_id for child in children)]:
        client.set_terminated(run_id, status)


def trial_progress(trials: int):
    """A Tune callback printing `tune: done/total trials, rate, elapsed, ETA` as each trial ends."""
    from ray.tune import Callback

    from pipelines.progress import Progress

    class _TrialProgress(Callback):
        def __init__(self):
            self.progress, self.done = Progress("tune", trials, "trials", every_s=0), 0

        def _ended(self, trial, how):
            self.done += 1
            best = trial.last_result.get("quick_fd") if trial.last_result else None
            note = f"trial {trial.trial_id} {how}" + (f", last quick_fd {best:.4f}" if best is not None else "")
            self.progress.update(self.done, note)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._ended(trial, "ended")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._ended(trial, "failed")

    return _TrialProgress()


def finish(client, tracking_uri, exp, parent, space, results, args, num_rows, model_name, manifest, storage) -> int:
    from .summary import close_child_runs, log_summary, trial_rows

    def steps_for(params):
        return total_steps(config_from_dict(apply(space.base, params)), num_rows, args.workers)[1]

    rows = trial_rows(results, steps_for)
    close_child_runs(client, exp, parent, rows)
    keys = list(space.entries)
    print(log_summary(client, parent, rows, keys), flush=True)
    for row in rows:
        if row.error:
            print(f"trial {row.trial_id} failed: {row.error}", flush=True)
    ranked = sorted((r for r in rows if r.checkpoint and math.isfinite(r.score)), key=lambda r: r.score)
    if not ranked:
        print("no trial reported quick_fd with a checkpoint: nothing registered", flush=True)
        return 1
    best = ranked[0]
    client.set_tag(parent, "imf.tune.best_trial", best.trial_id)
    client.set_tag(parent, "imf.tune.best_run_id", best.run_id or "")
    version = register_best(best, space, model_name, manifest, client, tracking_uri, storage)
    client.set_tag(parent, "imf.tune.registered", f"models:/{version.name}/{version.version}")
    print(f"best trial {best.trial_id}: quick_fd {best.score:.4f} at step {best.best.get('step')} "
          f"(omega {best.best.get('quick_fd_best_omega')}); registered models:/{version.name}/{version.version} "
          f"(aliases: {', '.join(version.aliases)})", flush=True)
    return 0


def register_best(best, space, model_name, manifest, client, tracking_uri, storage):
    from pipelines.models.registry import register_checkpoint

    cfg = config_from_dict(apply(space.base, best.params))
    guidance = {"omega": best.best.get("quick_fd_best_omega", max(cfg.sampling.omegas)),
                "t_min": cfg.sampling.t_min, "t_max": cfg.sampling.t_max, "steps": 1}
    metrics = {k: v for k, v in best.best.items() if isinstance(v, (int, float))}
    status = client.get_run(best.run_id).info.status if best.run_id else None
    with _local_checkpoint(best.checkpoint, storage) as directory:
        version = register_checkpoint(directory, model_name, tracking_uri, manifest, run_id=best.run_id,
                                      aliases=("challenger",), metrics=metrics, config=cfg.to_dict(),
                                      guidance=guidance)
    if status and status != "FINISHED":
        client.set_terminated(best.run_id, status)  # logging the model reopened the run
    return version


def _local_checkpoint(path, storage):
    if isinstance(storage, Path):
        if not Path(path).is_dir():
            raise UserError(f"the best checkpoint {path} is gone; was {storage} cleaned during the sweep?")
        return contextlib.nullcontext(path)
    from ray.train import Checkpoint

    return Checkpoint(path, filesystem=Location.of(storage).fs).as_directory()


def register(steps):
    from pipelines.cli import spec_from_args
    from pipelines.train.driver import add_run_flags

    parser = steps.add_parser("tune", help="sweep guidance conditioning, time samplers, tangents with Ray Tune + ASHA")
    parser.add_argument("--space", required=True, help="search space YAML (tune/spaces/NAME.yaml, or NAME)")
    parser.add_argument("--trials", type=int, required=True, help="number of trials (a multiple of the grid size)")
    parser.add_argument("--max-steps", type=int, required=True, help="training steps of a trial that is never stopped")
    parser.add_argument("--config", default=None, help="train config YAML replacing the space's `base`")
    parser.add_argument("--evals", type=int, default=4, help="quick_fd evaluations (and checkpoints) per trial")
    parser.add_argument("--eval-samples", type=int, default=256, help="1-NFE samples per quick_fd evaluation")
    parser.add_argument("--grace", type=int, default=None, help="ASHA grace period in steps (default: first eval)")
    parser.add_argument("--reduction-factor", type=float, default=2.0, help="ASHA reduction factor")
    parser.add_argument("--max-concurrent", type=int, default=None,
                        help="trials at once (default: what the cluster holds; 1 without GPUs)")
    parser.add_argument("--name", default=None, help="sweep name (default tune-<space>-<time>)")
    parser.add_argument("--register", default=None, metavar="NAME",
                        help="registered model name for the best trial (default imf-<space>)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random search")
    add_run_flags(parser)
    parser.set_defaults(func=lambda args: run_tune(spec_from_args(TuneSpec, args)))


register.after = "pipelines.train.driver"  # listed after `imf train` in the help
