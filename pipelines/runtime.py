"""Ray start-up shared by every step: a local instance on a laptop, or an existing cluster.

Local instances follow what works on a 2-core machine: a short RAY_TMPDIR, token auth
off, logical CPUs at least 4 so that Ray Data read tasks are not starved by training
workers, and no dashboard.
"""

import logging
import os
import signal
import tempfile
import threading

from . import ray_seams
from .errors import UserError, host_port, probe_tcp

LOCAL = (None, "", "local")


def local_cpus() -> int:
    """Logical CPUs for a local instance: twice the cores, at least 4."""
    return max(4, 2 * (os.cpu_count() or 2))


# Serve's fast request path (`imf serve`): gRPC from the HTTP proxy to the replicas and between replicas, and each
# replica's own event loop for the application and its router (Ray's throughput-optimized settings without direct
# ingress). Read by every Serve process when it starts: a local instance gets them here, a cluster from its
# nodes' environment (infra/k8s/rayservice.yaml). On 2 cores: 16.0 -> 12.7 ms per one-image request
# (bench/RESULTS.md).
SERVE_FAST_PATH = {"RAY_SERVE_USE_GRPC_BY_DEFAULT": "1", "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
                   "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}

# Loggers that a local instance makes noisy (ray_seams.NOISY_LOGGERS says why).
NOISY_ON_LOCAL_INSTANCES = ray_seams.NOISY_LOGGERS


def setup_local_worker():
    """worker_process_setup_hook of local instances: see NOISY_ON_LOCAL_INSTANCES, defer_sigterm and
    without_data_shutdown_race. Also names this instance in RAY_ADDRESS: where several Ray instances run on one
    machine, Ray's own helpers in the workers (Train's watchdog asks the State API with no address) would otherwise
    fail on "found multiple active Ray instances"."""
    import ray

    for name, level in NOISY_ON_LOCAL_INSTANCES.items():
        # A filter, not a level: Ray Train's controller reconfigures `ray.train`, which resets its children's levels.
        logging.getLogger(name).addFilter(lambda record, level=level: record.levelno >= level)
    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    defer_sigterm()
    threading.excepthook = without_data_shutdown_race(threading.excepthook)


def without_data_shutdown_race(hook):
    """A threading.excepthook that drops Ray Data's completion thread interrupted by a dataset's shutdown
    (ray_seams.data_shutdown_race) and passes everything else to `hook`."""
    def excepthook(args):
        if not ray_seams.data_shutdown_race(args):
            hook(args)
    return excepthook


SIGTERM_LISTENING = threading.Event()  # a training loop runs in this worker process (train/preemption.py)
SIGTERM_REQUESTED = threading.Event()  # this process got SIGTERM while one did


def defer_sigterm():
    """In a worker process whose training loop listens, SIGTERM sets SIGTERM_REQUESTED (the loop stops at the
    next step boundary with a checkpoint) instead of ending the process; elsewhere Ray's handler runs as
    before. Ray's worker main loop installs its handler after the setup hook has run, so this wraps Ray's
    installer rather than installing a handler itself (ray_seams: sigterm_installer)."""

    def wrap(install):
        def install_wrapped(ray_handler):
            def handler(signum, frame):
                if SIGTERM_LISTENING.is_set():
                    SIGTERM_REQUESTED.set()
                else:
                    ray_handler(signum, frame)
            install(handler)
        return install_wrapped

    ray_seams.wrap_sigterm_installer(wrap)


class Stopped(KeyboardInterrupt):
    """SIGTERM to an `imf` command (a process manager's stop), raised in the main thread as Ctrl-C raises
    KeyboardInterrupt: the command ends the same way, with its own status (cli.py)."""


_stop_on_sigterm = False


def _raise_stopped(signum, frame):
    raise Stopped


def stop_on_sigterm():
    """SIGTERM raises Stopped in the main thread from now on, in this process. `imf` calls it first thing, and
    start_ray again after ray.init: Ray's driver installs a handler that prints a stack dump and aborts."""
    global _stop_on_sigterm
    if threading.current_thread() is threading.main_thread():
        _stop_on_sigterm = True
        signal.signal(signal.SIGTERM, _raise_stopped)


# What a local instance sets in its environment (never over a value the user set), read when Ray is imported or
# started, or by the processes it starts. Each for a reason:
LOCAL_INSTANCE_ENV = {
    # its servers bind to loopback only (read when Ray is first imported)
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # socket paths under the temporary folder must stay short (about 107 characters)
    "RAY_TMPDIR": os.path.join(tempfile.gettempdir(), "ray_imf"),
    # Ray 2.59+ asks for a token by default; a local instance of one user needs none
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    # Train workers would otherwise route print() through a logger and echo each progress line twice.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    # Train's node-preemption watcher (observability only) has no other node to watch here, and its actor prints a
    # core_worker ERROR line per run; SIGTERM preemption is ours (train/preemption.py).
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    # Train's controller polls its workers every 2 s by default: each start and end of a run waits a few polls,
    # about 7 s of a 25 s tiny run on 2 cores. A poll is cheap next to that on one machine.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
    # Ray Data's read_parquet starts 32 footer-reading actors per read (processes, each a Ray worker's start-up);
    # one, with its 128 I/O threads, reads one machine's shards: a streamed tiny run, 92 -> 70 CPU-s on 2 cores.
    "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "1",
    **ray_seams.INTERNAL_CONFIG_ENV,
    **SERVE_FAST_PATH,
}


def start_ray(address: str | None = None, num_cpus: int | None = None, object_store_bytes: int = 1 << 30):
    """ray.init for a step. address: None/"local" (a new local instance), "auto", or "ray://HOST:10001"."""
    probe_cluster(address)
    if address in LOCAL:
        for key, value in LOCAL_INSTANCE_ENV.items():
            os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        return ray
    if address in LOCAL:
        ray_seams.start_local_instances_in_own_process_group()  # a signal to our group must not reach them
        ray.init(address="local", num_cpus=num_cpus or local_cpus(), object_store_memory=object_store_bytes,
                 include_dashboard=False, logging_level="WARNING",
                 **ray_seams.temp_dir_argument(os.environ["RAY_TMPDIR"]),
                 logging_config=ray.LoggingConfig(log_level="WARNING"),
                 runtime_env={"worker_process_setup_hook": "pipelines.runtime.setup_local_worker"})
    else:
        try:
            ray.init(address=address, logging_level="WARNING", logging_config=ray.LoggingConfig(log_level="WARNING"))
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise UserError(
                f"cannot reach the Ray cluster at {address!r} ({err}). Start one with `ray start --head` "
                "(then use --address auto), check the ray:// port (10001), or drop --address for a local instance."
            ) from err
    if _stop_on_sigterm:
        stop_on_sigterm()
    quiet_ray_data()
    return ray


def probe_cluster(address: str):
    """A TCP probe of an explicit cluster address (HOST:PORT of the GCS, ray://HOST:PORT of the client server, or
    $RAY_ADDRESS for auto): a dead port is a UserError in seconds, where ray.init would retry for minutes."""
    if address in LOCAL:
        return
    given = os.environ.get("RAY_ADDRESS") if address == "auto" else address
    target = host_port(given) if given and given != "auto" else None
    if target:
        probe_tcp(*target, what=f"the Ray cluster (--address {address})",
                  fix="Start one with `ray start --head` (then use --address auto), check the host and port "
                      "(GCS 6379, ray:// client 10001), or drop --address for a local instance.")


def quiet_ray_data():
    """The steps print their own progress lines (done/total, rate, ETA): Ray Data's bars and its
    periodic progress log (every 10 s where stdout is not a terminal) and per-run plan would bury them."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
