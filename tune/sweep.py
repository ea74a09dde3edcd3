"""`imf tune`: Ray Tune over the training driver, with ASHA early stopping on `quick_fd`.

Each trial is a Tune function that builds and fits a TorchTrainer (tune/trial.py) and logs to an
MLflow child run; the driver owns the parent run, writes its summary table and plot, and registers
the best trial's best checkpoint (`challenger`, and `champion` when the model has none yet).
Everything that can be checked (space, configs, data, workers, tracking store) is checked before Ray starts.
"""

import contextlib
import math
import time
from pathlib import Path

from pipelines.config import config_from_dict
from pipelines.errors import UserError
from pipelines.train import add_cluster_args, log_params, prepare, storage_root
from pipelines.tracking import connect, experiment_id

from .space import apply, check, load_space

TRIAL_CPU = 0.1  # the Tune function itself; its TorchTrainer's workers hold their own resources


def sweep_settings(max_steps: int, evals: int, eval_samples: int) -> dict:
    """What the sweep sets in every trial's config: `evals` quick_fd evaluations, each with a checkpoint.
    A trial keeps its best checkpoint by quick_fd (the one a sweep registers) and Ray Train also keeps
    the latest (for restarts after a failure): at most two per trial, whatever the number of evals."""
    every = max(1, max_steps // evals)
    return {"train.max_steps": max_steps, "train.eval_every": every, "train.checkpoint_every": every,
            "train.eval_samples": eval_samples, "train.keep_checkpoints": 1}


def expected_steps(cfg, num_rows: int, workers: int) -> int:
    """The step a trial ends at when ASHA lets it run (as the training loop computes it)."""
    local = cfg.train.batch_size // workers
    steps = int(cfg.train.epochs * (num_rows // workers // local))
    return min(steps, cfg.train.max_steps) if cfg.train.max_steps else steps


def worker_resources(args) -> tuple[float, float]:
    """(GPUs, CPUs) per training worker, with build_trainer's defaults made explicit."""
    import ray

    cluster_gpus = ray.cluster_resources().get("GPU", 0)
    gpus = args.gpus_per_worker if args.gpus_per_worker is not None else (1 if cluster_gpus >= args.workers else 0)
    return gpus, args.cpus_per_worker or (0.5 if gpus == 0 else 4)


def concurrency(args, gpus: float, cpus: float) -> int:
    """Trials at once: as many as the cluster holds; one on a machine without GPUs, where concurrent
    CPU trials starve Ray Data's read tasks (see ECOSYSTEM.md)."""
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


def check_args(args):
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


def run_tune(args) -> int:
    from pipelines.runtime import start_ray

    check_args(args)
    space = load_space(args.space, args.config)
    settings = sweep_settings(args.max_steps, args.evals, args.eval_samples)
    space.base = apply(space.base, settings)
    check(space, args.workers, args.seed)
    grid = space.grid_size()
    if args.trials % grid:
        raise UserError(f"--trials {args.trials}: {space.path} has grid entries with {grid} combinations; "
                        f"give a multiple of {grid}")
    cfg, manifest, num_rows = prepare(args, config_from_dict(space.base))
    storage = storage_root(args.storage)
    sweep = args.name or f"tune-{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    model_name = args.register or f"imf-{space.name}"
    client, tracking_uri = connect(args.tracking_uri)
    data = str(Path(args.data).resolve())
    exp = experiment_id(client, args.experiment or f"imf/{manifest.get('dataset') or Path(data).name}", tracking_uri)
    parent = client.create_run(exp, run_name=sweep, tags={"imf.tune.space": str(space.path), "imf.data": data,
                                                         "imf.model": cfg.model.name}).info.run_id
    grace = args.grace or settings["train.eval_every"]
    log_params(client, parent, {
        "space": str(space.path), "trials": args.trials, "max_steps": args.max_steps, "evals": args.evals,
        "eval_samples": args.eval_samples, "metric": "quick_fd", "asha.grace": grace,
        "asha.reduction_factor": args.reduction_factor, "workers": args.workers, "seed": args.seed,
        "registered_model": model_name, **{f"space.{k}": v for k, v in space.entries.items()}})
    print(f"sweep {sweep}: {args.trials} trial(s) of {space.path.name} ({', '.join(space.entries)}), "
          f"{args.max_steps} steps each, quick_fd every {settings['train.eval_every']} steps; "
          f"MLflow parent run {parent}", flush=True)

    try:
        start_ray(args.address)
        gpus, cpus = worker_resources(args)
        setup = {"base": space.base, "sweep": sweep, "tracking_uri": tracking_uri, "experiment_id": exp,
                 "parent_run_id": parent, "train_storage": _join(storage, sweep, "train"),
                 "args": {"data": data, "workers": args.workers, "gpus_per_worker": gpus, "cpus_per_worker": cpus,
                          "max_failures": args.max_failures, "debug_dir": None}}
        results = fit(space, setup, args, storage, sweep, grace, concurrency(args, gpus, cpus))
        status = finish(client, tracking_uri, exp, parent, space, results, args, num_rows, model_name, manifest,
                        storage)
    except BaseException:
        client.set_terminated(parent, "FAILED")
        raise
    client.set_terminated(parent, "FINISHED" if status == 0 else "FAILED")
    return status


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
        run_config=tune.RunConfig(name=sweep, storage_path=str(storage)),
    )
    return tuner.fit()


def finish(client, tracking_uri, exp, parent, space, results, args, num_rows, model_name, manifest, storage) -> int:
    from .summary import close_child_runs, log_summary, trial_rows

    def steps_for(params):
        return expected_steps(config_from_dict(apply(space.base, params)), num_rows, args.workers)

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
    from pipelines.registry import register_checkpoint

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
    import pyarrow.fs
    from ray.train import Checkpoint

    filesystem, _ = pyarrow.fs.FileSystem.from_uri(str(storage))
    return Checkpoint(path, filesystem=filesystem).as_directory()


def register(steps):
    parser = steps.add_parser("tune", help="sweep guidance conditioning, time samplers, tangents with Ray Tune + ASHA")
    parser.add_argument("--data", required=True, help="folder written by `imf encode`")
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
    parser.add_argument("--workers", type=int, default=1, help="training workers per trial")
    parser.add_argument("--gpus-per-worker", type=float, default=None, help="default: 1 when the cluster has GPUs")
    parser.add_argument("--cpus-per-worker", type=float, default=None)
    parser.add_argument("--max-failures", type=int, default=0, help="worker-group restarts allowed per trial")
    parser.add_argument("--storage", default="imf_runs", help="checkpoint storage path (local folder or URI)")
    parser.add_argument("--name", default=None, help="sweep name (default tune-<space>-<time>)")
    parser.add_argument("--experiment", default=None, help="MLflow experiment (default imf/<dataset>)")
    parser.add_argument("--register", default=None, metavar="NAME",
                        help="registered model name for the best trial (default imf-<space>)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random search")
    add_cluster_args(parser)
    parser.set_defaults(func=run_tune)
