"""`imf submit STEP [ARGS]` and `imf jobs list|logs|stop`: steps as Ray Jobs on a cluster.

`imf submit` checks STEP ARGS against the real parser, ships this checkout to the cluster as
the job's working directory, runs `python -m pipelines.cli STEP ARGS` there through Ray's Jobs
API, streams the logs and exits with the job's outcome. The address is the Jobs API (the
dashboard's HTTP port, 8265 by default), not the ray:// client port that steps take.
"""

import argparse
import asyncio
import contextlib
import os
import secrets
import shlex
import sys
import time
from pathlib import Path

from .. import ray_seams
from ..errors import UserError

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
ADDRESS_HELP = ("Ray Jobs API: http://HOST:8265, the dashboard's HTTP port (not ray://HOST:10001), or auto for "
                "the head on this machine; default $RAY_API_SERVER_ADDRESS or " + DEFAULT_ADDRESS)
# Never shipped with a job: environments, data and run outputs (gitignore syntax, relative to the checkout).
EXCLUDES = ["/.git/", "/.venv/", "/venv/", "/data/", "/runs/", "/imf_runs/", "/mlruns/", "/demo_out/",
            "__pycache__/", "*.egg-info/", ".pytest_cache/", "*.parquet", "*.safetensors", "*.pth", "*.npz"]
PACKAGES = ("imf_core", "pipelines", "tune")
NOT_SUBMITTABLE = ("submit", "jobs")


def jobs_url(address: str | None) -> str:
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or DEFAULT_ADDRESS
    if address.startswith("ray://"):
        host = address.removeprefix("ray://").split(":")[0]
        raise UserError(f"--address {address} is the Ray client port; `imf submit` and `imf jobs` talk to the Jobs "
                        f"API on the dashboard port: use --address http://{host}:8265")
    if address != "auto" and "://" not in address:
        address = f"http://{address}"
    return address


@contextlib.contextmanager
def _address_as_given():
    # Ray lets RAY_API_SERVER_ADDRESS and RAY_ADDRESS override the client's address argument; ours must win.
    saved = {k: os.environ.pop(k) for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def connect(address: str | None):
    from ray.job_submission import JobSubmissionClient

    url = jobs_url(address)
    try:
        with _address_as_given():
            return JobSubmissionClient(url)
    except (ConnectionError, RuntimeError, ValueError, OSError) as err:
        raise UserError(
            f"cannot reach the Ray Jobs API at {url} ({str(err)[:300]}). Start a head with `ray start --head "
            "--dashboard-host 127.0.0.1`, or forward a remote head's port 8265 (`ray dashboard cluster.yaml`, "
            "`kubectl port-forward svc/imf-head-svc 8265:8265`, `ssh -L 8265:localhost:8265 HEAD`) and pass "
            "--address http://127.0.0.1:8265; with token auth set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN") from err


def checkout_root() -> Path | None:
    """The source checkout this package runs from, or None when it is installed in site-packages."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "pipelines" / "cli.py").is_file() else None


def runtime_env(root: Path | None, excludes=(), env_vars: dict | None = None) -> dict:
    """The job's code: the checkout as working directory (or the installed packages) and its environment."""
    env = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", **(env_vars or {})}
    if root is not None:
        return {"working_dir": str(root), "excludes": EXCLUDES + list(excludes), "env_vars": env}
    import importlib

    modules = [str(Path(importlib.import_module(name).__file__).parent) for name in PACKAGES]
    return {"py_modules": modules, "excludes": EXCLUDES + list(excludes), "env_vars": env}


def step_argv(step: str, args: list[str]) -> list[str]:
    """STEP ARGS as the job will run them; refused here (argparse exits 2) if the CLI would refuse them."""
    from ..cli import build_parser

    if step in NOT_SUBMITTABLE:
        raise UserError(f"`imf submit {step}` would run on the cluster, where it makes no sense: submit a step "
                        "(encode, train, tune, models, sample, evaluate, ...)")
    parsed = build_parser().parse_args([step, *args])
    if hasattr(parsed, "address") and parsed.address is None:
        args = ["--address", "auto", *args]  # inside a job, `auto` is the cluster that runs it
    uses_local_store = getattr(parsed, "uses_local_store", None)
    if getattr(parsed, "tracking_uri", "") is None and uses_local_store and uses_local_store(parsed):
        raise UserError(f"imf {step} on a cluster needs --tracking-uri http://MLFLOW_HOST:5000 (a server every node "
                        "reaches): its default local store would land in the job's temporary working directory")
    return [step, *args]


def local_only_paths(args: list[str], root: Path | None) -> list[str]:
    """Relative paths that exist here but will not exist in the job's working directory."""
    left_out = (".venv", "venv", "data", "runs", "imf_runs", "mlruns", "demo_out")
    found = []
    for arg in args:
        if arg.startswith("-") or "://" in arg or os.path.isabs(arg) or not os.path.exists(arg):
            continue
        inside = root is not None and (root / arg).resolve().is_relative_to(root.resolve())
        if not (inside and (root / arg).exists() and Path(arg).parts[0] not in left_out):
            found.append(arg)
    return found


def status_code(info) -> int:
    """0 for SUCCEEDED; the step's own exit status for FAILED (1 if unknown); 1 for STOPPED."""
    status = str(info.status)
    if status == "SUCCEEDED":
        return 0
    if status == "FAILED" and info.driver_exit_code:
        return int(info.driver_exit_code)
    return 1


def follow(client, job_id: str, url: str) -> int:
    """Stream a job's logs until it ends; return its status code."""
    async def tail():
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    try:
        asyncio.run(tail())
        deadline = time.time() + 60  # the status may trail the end of the log stream
        while not client.get_job_status(job_id).is_terminal() and time.time() < deadline:
            time.sleep(1)
        info = client.get_job_info(job_id)
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (runtime.Stopped)
        from ..runtime import Stopped

        print(f"\nimf: stopped following; job {job_id} keeps running. Follow it: imf jobs logs {job_id} --follow "
              f"--address {url}; stop it: imf jobs stop {job_id} --address {url}", file=sys.stderr)
        return 143 if isinstance(stop, Stopped) else 130
    except (RuntimeError, ConnectionError, OSError) as err:
        raise UserError(f"lost the Jobs API at {url} while following job {job_id} ({str(err)[:200]}); it may still "
                        f"be running: imf jobs logs {job_id} --follow --address {url}") from err
    if not info.status.is_terminal():
        raise UserError(f"job {job_id} is still {info.status} a minute after its logs ended; check "
                        f"`imf jobs list --address {url}`")
    detail = f": {info.message}" if str(info.status) != "SUCCEEDED" and info.message else ""
    print(f"imf: job {job_id} {info.status}{detail}", file=sys.stderr)
    return status_code(info)


def _submit(client, url: str, **kwargs) -> str:
    deadline = time.time() + 120
    while True:
        try:
            return client.submit_job(**kwargs)
        except (RuntimeError, ValueError) as err:
            # A head that has just started answers this until its job agent is up.
            if ray_seams.job_agent_starting(err) and time.time() < deadline:
                time.sleep(2)
                continue
            hint = (" Leave large files out with --exclude PATTERN or a .rayignore file."
                    if "size" in str(err).lower() else "")
            raise UserError(f"the Jobs API at {url} refused the job: {str(err)[:400]}{hint}") from err


def run_submit(args) -> int:
    argv = step_argv(args.step, args.args)
    root = Path(args.working_dir).resolve() if args.working_dir else checkout_root()
    for path in local_only_paths(args.args, root):
        print(f"imf submit: warning: {path} is a path on this machine; the job runs in a copy of the checkout on "
              "the cluster: pass an absolute path on storage every node mounts (or a URI)", file=sys.stderr)
    env_vars = dict(kv.split("=", 1) for kv in args.env)
    client = connect(args.address)
    url = jobs_url(args.address)
    job_id = args.submission_id or f"imf-{args.step}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    entrypoint = "python -m pipelines.cli " + shlex.join(argv)
    _submit(client, url, entrypoint=entrypoint, submission_id=job_id,
            runtime_env=runtime_env(root, args.exclude, env_vars),
            metadata={"imf_step": args.step, "imf_argv": shlex.join(argv)},
            entrypoint_num_gpus=args.entrypoint_gpus or None)
    print(f"imf submit: job {job_id} submitted to {url}: {entrypoint}", file=sys.stderr)
    if args.no_wait:
        print(job_id)
        return 0
    return follow(client, job_id, url)


def _job_call(fn, job_id, url):
    try:
        return fn(job_id)
    except RuntimeError as err:
        if ray_seams.job_not_found(err):
            raise UserError(f"no job {job_id!r} on the cluster at {url}: `imf jobs list --address {url}` "
                            "shows the ids") from err
        raise UserError(f"the Jobs API at {url} failed for job {job_id} ({str(err)[:300]})") from err


def run_jobs(args) -> int:
    client = connect(args.address)
    url = jobs_url(args.address)
    if args.jobs_command == "list":
        jobs = sorted(client.list_jobs(), key=lambda j: j.start_time or 0)
        print(f"{'SUBMISSION ID':<36} {'STATUS':<10} {'STARTED':<19} COMMAND")
        for job in jobs:
            started = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.start_time / 1000))
                       if job.start_time else "-")
            command = (job.metadata or {}).get("imf_argv") or job.entrypoint
            print(f"{job.submission_id or job.job_id:<36} {str(job.status):<10} {started:<19} {command}")
        return 0
    if args.jobs_command == "logs":
        if args.follow:
            _job_call(client.get_job_info, args.job_id, url)
            return follow(client, args.job_id, url)
        sys.stdout.write(_job_call(client.get_job_logs, args.job_id, url))
        return 0
    stopped = _job_call(client.stop_job, args.job_id, url)
    info = _job_call(client.get_job_info, args.job_id, url)
    print(f"job {args.job_id}: {'stop requested' if stopped else 'already finished'} ({info.status})")
    return 0


def _env_pair(text: str) -> str:
    if "=" not in text or text.startswith("="):
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return text


def register_submit(steps):
    parser = steps.add_parser(
        "submit", help="run a step as a Ray Job on a cluster, stream its logs, exit with its status",
        description=__doc__.split("\n\n")[0] + " Options of submit come before STEP; everything after STEP is the "
        "step's. Paths in ARGS are read on the cluster: use storage every node mounts. Steps that take --address "
        "get --address auto (the cluster running the job) unless given. Exit status: 0 when the job SUCCEEDED, "
        "the step's own status when it FAILED (1 if unknown), 1 when STOPPED, 130 when you stop following.")
    parser.add_argument("--address", default=None, help=ADDRESS_HELP)
    parser.add_argument("--submission-id", default=None, help="job id (default imf-STEP-TIME-XXXX)")
    parser.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    parser.add_argument("--working-dir", default=None, help="code to ship (default: this checkout)")
    parser.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                        help="more files to leave out of the shipped code (gitignore syntax)")
    parser.add_argument("--env", action="append", default=[], type=_env_pair, metavar="KEY=VALUE",
                        help="environment of the job (visible in the dashboard: no secrets; set those on the nodes)")
    parser.add_argument("--entrypoint-gpus", type=float, default=0, help="GPUs reserved for the step's driver")
    parser.add_argument("step", metavar="STEP", help="encode, train, tune, models, sample, evaluate, data, demo")
    parser.add_argument("args", nargs="...", metavar="ARGS", help="the step's own arguments")
    parser.set_defaults(func=run_submit)


def register_jobs(steps):
    parser = steps.add_parser("jobs", help="list Ray Jobs, print or follow their logs, stop them")
    parser.add_argument("--address", default=None, help=ADDRESS_HELP)
    sub = parser.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    actions = [sub.add_parser("list", help="every job with its status and command"),
               sub.add_parser("logs", help="a job's logs"), sub.add_parser("stop", help="stop a running job")]
    for action in actions:  # --address is accepted on either side of the action
        action.add_argument("--address", default=argparse.SUPPRESS, help=ADDRESS_HELP)
    for action in actions[1:]:
        action.add_argument("job_id", metavar="JOB_ID")
    actions[1].add_argument("--follow", action="store_true", help="stream until the job ends; exit with its status")
    parser.set_defaults(func=run_jobs)


def register(steps):
    register_submit(steps)
    register_jobs(steps)
