"""Every internal of Ray, torch-fidelity and pytest-xdist the project relies on is still there, named as the seam
modules name it (pipelines/ray_seams.py, pipelines/evaluation/fidelity_seams.py, tests/xdist_seams.py); and no
module outside them reaches into those libraries' internals."""

import importlib.util
import inspect
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SEAM_MODULES = {"pipelines/ray_seams.py", "pipelines/evaluation/fidelity_seams.py", "tests/xdist_seams.py",
                "tests/test_seams.py"}
PRIVATE = re.compile(r"\bray\.(?:[a-z_.]*\._[a-z]|_)|ray\._raylet|_internal|ray\._private|torch_fidelity\._|"
                     r"_split_scope|sys\.modules\[\"torch_fidelity|\"(?:No available agent|its owner has died)")


def seam(name, ok, why):
    assert ok, f"seam {name} changed in the installed library: {why}; see the seam module's docstring"


def test_sigterm_installer():
    import ray._private.utils as ray_utils

    install = getattr(ray_utils, "set_sigterm_handler", None)
    seam("sigterm_installer", callable(install) and len(inspect.signature(install).parameters) == 1,
         "ray._private.utils.set_sigterm_handler(handler) is gone")


def test_own_process_group():
    from ray._private import services

    seam("own_process_group", isinstance(getattr(services, "ConsolePopen", None), type),
         "ray._private.services.ConsolePopen is gone")
    source = inspect.getsource(services.start_ray_process)
    seam("own_process_group", "ConsolePopen(" in source and "preexec_fn=" in source,
         "start_ray_process no longer starts processes through ConsolePopen(..., preexec_fn=...)")


def test_train_sigint_handler():
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    register = getattr(DataParallelTrainer, "_register_sigint_handler", None)
    seam("train_sigint_handler", callable(register) and list(inspect.signature(register).parameters) == ["self",
         "controller"], "DataParallelTrainer._register_sigint_handler(self, controller) is gone")
    seam("train_sigint_handler", "_register_sigint_handler(" in inspect.getsource(DataParallelTrainer),
         "fit() no longer installs its SIGINT handler through _register_sigint_handler")


def test_data_shutdown_thread():
    from ray.data._internal import dynamic_work_queue

    from pipelines.ray_seams import DATA_SHUTDOWN_THREAD

    seam("data_shutdown_thread", f'name="{DATA_SHUTDOWN_THREAD}"' in inspect.getsource(dynamic_work_queue),
         f"Ray Data no longer names its completion thread {DATA_SHUTDOWN_THREAD!r}")


def test_torch_backend():
    from pipelines.ray_seams import torch_backend

    backend, set_env, setup = torch_backend()
    seam("torch_backend", hasattr(backend, "on_start"), "_TorchBackend.on_start is gone")
    params = set(inspect.signature(setup).parameters)
    seam("torch_backend", {"backend", "world_rank", "world_size", "init_method", "timeout_s"} <= params,
         f"_setup_torch_process_group takes {sorted(params)}")
    seam("torch_backend", callable(set_env), "_set_torch_distributed_env_vars is gone")


def test_controller_callback():
    from pipelines.ray_seams import controller_callback_class

    seam("controller_callback", hasattr(controller_callback_class(), "after_controller_start"),
         "ControllerCallback.after_controller_start is gone")


def test_logger_names():
    from pipelines.ray_seams import BACKEND_SETUP_LOGGER, NOISY_LOGGERS, report_logger

    for name in [*NOISY_LOGGERS, BACKEND_SETUP_LOGGER]:
        seam("logger names", importlib.util.find_spec(name) is not None, f"module {name} is gone")
    seam("logger names", report_logger() is not None, "ray.train.v2._internal.execution.context is gone")


def test_error_texts():
    import ray.dashboard.modules.job.job_head as job_head
    from ray.train.v2._internal.execution.checkpoint import sync_actor

    seam("error texts", hasattr(sync_actor, "SynchronizationActor"), "Train's SynchronizationActor was renamed")
    seam("error texts", "No available agent" in inspect.getsource(job_head), "the job agent's refusal changed")
    # "its owner has died" comes from Ray's core worker: tests/tune/test_trial.py meets it in a real teardown.


def test_temp_dir_argument_and_internal_config():
    import ray

    seam("temp_dir_argument", '"_temp_dir"' in inspect.getsource(inspect.unwrap(ray.init)),
         "ray.init no longer reads _temp_dir from its keyword arguments")
    binary = (Path(ray.__file__).parent / "core" / "src" / "ray" / "raylet" / "raylet").read_bytes()
    seam("internal_config", b"prestart_worker_first_driver" in binary,
         "Ray no longer knows the config flag prestart_worker_first_driver")


def test_runtime_env_package(tmp_path):
    from pipelines.ray_seams import runtime_env_package

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "keep.py").write_text("")
    (tmp_path / "src" / "drop.bin").write_text("")
    runtime_env_package(str(tmp_path / "src"), tmp_path / "p.zip", ["*.bin"])
    import zipfile

    seam("runtime_env_package", zipfile.ZipFile(tmp_path / "p.zip").namelist() == ["keep.py"],
         "Ray's packer no longer packs a folder with its excludes")


def test_fidelity_bare_submodule():
    spec = importlib.util.find_spec("torch_fidelity")
    seam("bare_submodule", spec is not None and any(
        (Path(p) / "feature_extractor_inceptionv3.py").is_file() for p in spec.submodule_search_locations),
        "torch_fidelity/feature_extractor_inceptionv3.py is gone")


def test_xdist_split_scope():
    from xdist.scheduler import LoadFileScheduling

    seam("split_scope", callable(getattr(LoadFileScheduling, "_split_scope", None)),
         "LoadFileScheduling._split_scope is gone")


@pytest.mark.parametrize("folder", ["pipelines", "tune", "imf_core", "tests"])
def test_no_internal_is_reached_outside_the_seam_modules(folder):
    files = subprocess.run(["git", "ls-files", folder], cwd=ROOT, capture_output=True, text=True).stdout.split()
    found = [f"{name}:{k + 1}: {line.strip()}" for name in files if name.endswith(".py") and name not in SEAM_MODULES
             for k, line in enumerate((ROOT / name).read_text().splitlines()) if PRIVATE.search(line)]
    assert not found, "internals reached outside the seam modules:\n" + "\n".join(found)
