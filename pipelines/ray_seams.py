"""Every place imf relies on Ray (2.60) beyond its public API: the one module that names Ray's internals.

pyproject.toml pins Ray to the minor these were read from; tests/test_seams.py checks each one against the
installed Ray and fails with the seam's name when an upgrade removes or changes it. The seams, why no public
API serves, and the test that exercises each in a real run:

- sigterm_installer: Ray's worker main loop installs its own SIGTERM handler (which ends the process) after
  the worker_process_setup_hook has run, through ray._private.utils.set_sigterm_handler; a training worker
  must instead stop at the next step boundary with a checkpoint. Wrapping that installer is the only way in.
  tests/pipelines/train/test_preemption.py (SIGTERM to a worker).
- train_sigint_handler: Ray Train's fit() replaces the driver's SIGINT handler with one that aborts the run with
  no checkpoint (DataParallelTrainer._register_sigint_handler); `imf train` stops at the next step boundary with a
  checkpoint instead, as for SIGTERM, so its own handler must stay. tests/pipelines/test_signals.py.
- torch_backend: Ray Train's TorchConfig always meets through an env:// TCPStore that listens on every
  interface; keeping a one-machine group on loopback needs its backend class and its process-group helpers
  (ray.train.torch.config._TorchBackend, _setup_torch_process_group, _set_torch_distributed_env_vars).
  tests/pipelines/train/test_train.py, tests/pipelines/test_runtime.py (listening sockets).
- controller_callback: Ray Train's controller callbacks (ray.train.v2._internal.execution.callback) are the
  only code that runs in a trial's controller process, where the teardown record to drop is logged; RunConfig
  accepts them. tests/tune/test_trial.py.
- logger names: loggers of Ray's internal modules whose records a local instance quiets (NOISY_LOGGERS,
  BACKEND_SETUP_LOGGER, REPORT_LOGGER); LoggingConfig reaches `ray.train`, not these. tests/pipelines/
  test_runtime.py, tests/tune/test_trial.py.
- data_shutdown_thread: Ray Data's thread that signals a read's completion ("completion-signaler", in
  ray.data._internal.dynamic_work_queue) raises InterruptedError when a dataset shuts down under it (a run that
  stops on a damaged shard); Python's thread hook prints that with a traceback, which local instances drop.
  tests/pipelines/test_runtime.py.
- error texts: Ray raises the same exception types for the cases told apart here, and says which in the
  message only (owner_died, synchronization_actor_died, job_agent_starting, job_not_found).
  tests/tune/test_trial.py, tests/tune/test_sweep.py, tests/pipelines/ops/test_jobs.py.
- temp_dir_argument: ray.init's `_temp_dir`, the only way to give a local instance a short temporary folder
  of its own besides the RAY_TMPDIR it reads too. Every local run.
- runtime_env_package: what Ray packs of a working_dir for a job (ray._private.runtime_env.packaging); `imf
  submit` relies on its excludes, and only Ray's own packer can show what it ships. tests/pipelines/ops/
  test_jobs.py.
- own_process_group: the Popen class (ray._private.services.ConsolePopen) through which ray.init starts a local
  instance's GCS, raylet and helpers. They must sit in a process group of their own, so that a signal to the
  command's whole group (Ctrl-C in a terminal, `timeout`, a container's stop) reaches the command alone, which then
  stops its workers through Ray; ray.init has no option for it. They still die with the command (Ray's fate
  sharing). tests/pipelines/test_signals.py.
- internal_config: RAY_prestart_worker_first_driver, one of Ray's internal config flags (read from the
  environment by the raylet): a local instance starts no workers ahead (bench figures in pipelines/runtime.py).
  Every local run.
"""

import importlib
import logging
import os

# Nothing of Ray is imported here at module level: a local instance sets its environment before Ray's first import.

# ---- sigterm_installer ----------------------------------------------------------------------------------------


def wrap_sigterm_installer(wrap):
    """Replace Ray's installer of its worker SIGTERM handler with wrap(installer) (idempotent)."""
    import ray._private.utils as ray_utils

    install = ray_utils.set_sigterm_handler
    if not getattr(install, "imf_wrapped", False):
        wrapped = wrap(install)
        wrapped.imf_wrapped = True
        ray_utils.set_sigterm_handler = wrapped


# ---- own_process_group ------------------------------------------------------------------------------------------

def start_local_instances_in_own_process_group():
    """Make ray.init start a local instance's processes in a new process group (idempotent)."""
    from ray._private import services

    if getattr(services.ConsolePopen, "imf_own_group", False):
        return

    class OwnGroupPopen(services.ConsolePopen):
        imf_own_group = True

        def __init__(self, *args, preexec_fn=None, **kwargs):
            def in_own_group():
                os.setpgid(0, 0)
                if preexec_fn is not None:
                    preexec_fn()

            super().__init__(*args, preexec_fn=in_own_group, **kwargs)

    services.ConsolePopen = OwnGroupPopen


# ---- train_sigint_handler -------------------------------------------------------------------------------------

def keep_sigint_handler_through_fit():
    """Make Ray Train's fit() leave the driver's SIGINT handler as it is (idempotent)."""
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    DataParallelTrainer._register_sigint_handler = lambda self, controller: None


# ---- torch_backend ----------------------------------------------------------------------------------------------

def torch_backend():
    """(Ray Train's TorchConfig backend class, its env-var setter, its process-group setup) for a backend of our own."""
    from ray.train.torch import config

    return config._TorchBackend, config._set_torch_distributed_env_vars, config._setup_torch_process_group


# ---- controller_callback ----------------------------------------------------------------------------------------

def controller_callback_class():
    from ray.train.v2._internal.execution.callback import ControllerCallback

    return ControllerCallback


# ---- logger names ----------------------------------------------------------------------------------------------

# A local instance has no dashboard (State API) and no autoscaler: Train's placement-group watchdog warns every
# second that it cannot ask the one, and its controller's call to the other times out with a traceback Ray itself
# calls safe to ignore.
NOISY_LOGGERS = {
    "ray.train.v2._internal.execution.controller.placement_group_cleaner": logging.ERROR,
    "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client": logging.ERROR,
    # A streamed shard that cannot be read (damaged during a run): the split coordinator logs the read task's
    # traceback twice; the training worker names the shard itself (train/read_guard.py) and the run ends cleanly.
    "ray.data._internal.execution.streaming_executor_state": logging.CRITICAL + 1,
    "ray.data._internal.iterator.stream_split_iterator": logging.CRITICAL + 1,
}
BACKEND_SETUP_LOGGER = "ray.train.v2._internal.callbacks.backend_setup"  # logs a worker group's teardown


def report_logger() -> logging.Logger | None:
    """The logger of Train's per-report INFO lines: it logs under its file path, not under `ray.train`."""
    try:
        context = importlib.import_module("ray.train.v2._internal.execution.context")
    except ImportError:
        return None
    return logging.getLogger(context.__file__)


# ---- data_shutdown_thread ---------------------------------------------------------------------------------------

DATA_SHUTDOWN_THREAD = "completion-signaler"


def data_shutdown_race(args) -> bool:
    """Whether a threading.excepthook record is Ray Data's completion thread interrupted by a shutdown."""
    name = args.thread.name if args.thread is not None else ""
    return issubclass(args.exc_type, InterruptedError) and name.endswith(DATA_SHUTDOWN_THREAD)


# ---- error texts ------------------------------------------------------------------------------------------------

def owner_died(err: BaseException | None) -> bool:
    """An actor that died because its owner did (a Tune trial's actor, ended by ASHA, owns its Train workers)."""
    from ray.exceptions import RayActorError

    return isinstance(err, RayActorError) and "its owner has died" in str(err)


def synchronization_actor_died(err: BaseException) -> bool:
    """A report failed because the run's controller is gone: Train's SynchronizationActor, which it owns, died."""
    from ray.exceptions import RayActorError

    return isinstance(err, RayActorError) and "SynchronizationActor" in str(err)


def job_agent_starting(err: BaseException) -> bool:
    """A head that has just started refuses jobs until its job agent is up."""
    return "No available agent" in str(err)


def job_not_found(err: BaseException) -> bool:
    return "404" in str(err) or "does not exist" in str(err)


# ---- runtime_env_package ----------------------------------------------------------------------------------------

def runtime_env_package(root: str, target, excludes) -> None:
    """Pack `root` into the zip `target` as Ray packs a job's working_dir (honouring .gitignore and excludes)."""
    from ray._private.runtime_env.packaging import create_package

    create_package(root, target, include_gitignore=True, excludes=excludes)


# ---- temp_dir_argument, internal_config -----------------------------------------------------------------------

def temp_dir_argument(path: str) -> dict:
    """ray.init keyword arguments that put a local instance's sessions under `path`."""
    return {"_temp_dir": path}


# Ray starts one worker per logical CPU ahead for the first driver; a pipeline step uses few of them, and each
# unused one costs a worker's start-up: a fresh tiny imf train, 74 / 64 -> 58 / 59 CPU-s on 2 cores.
INTERNAL_CONFIG_ENV = {"RAY_prestart_worker_first_driver": "0"}
