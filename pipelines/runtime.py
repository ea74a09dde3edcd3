"""Ray start-up shared by every step: a local instance on a laptop, or an existing cluster.

Local instances follow what works on a 2-core machine (../shared/ECOSYSTEM.md): a
short RAY_TMPDIR, token auth off, logical CPUs at least 4 so that Ray Data read
tasks are not starved by training workers, and no dashboard.
"""

import logging
import os
import tempfile

from .errors import UserError

LOCAL = (None, "", "local")


def local_cpus() -> int:
    """Logical CPUs for a local instance: twice the cores, at least 4."""
    return max(4, 2 * (os.cpu_count() or 2))


# Loggers that a local instance without a dashboard makes noisy: Ray Train's placement-group
# watchdog asks the State API (served by the dashboard) every second and warns each time it cannot.
NOISY_WITHOUT_DASHBOARD = {"ray.train.v2._internal.execution.controller.placement_group_cleaner": logging.ERROR}


def quiet_dashboardless_worker():
    """worker_process_setup_hook of local instances: see NOISY_WITHOUT_DASHBOARD."""
    for name, level in NOISY_WITHOUT_DASHBOARD.items():
        logging.getLogger(name).setLevel(level)


def start_ray(address: str | None = None, num_cpus: int | None = None, object_store_bytes: int = 1 << 30):
    """ray.init for a step. address: None/"local" (a new local instance), "auto", or "ray://HOST:10001"."""
    if address in LOCAL:
        # Read when Ray is first imported: a local instance then binds its servers to loopback only.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return ray
    if address in LOCAL:
        os.environ.setdefault("RAY_TMPDIR", os.path.join(tempfile.gettempdir(), "ray_imf"))
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
        # Train workers would otherwise route print() through a logger and echo each progress line twice.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
        ray.init(address="local", num_cpus=num_cpus or local_cpus(), object_store_memory=object_store_bytes,
                 include_dashboard=False, logging_level="WARNING", _temp_dir=os.environ["RAY_TMPDIR"],
                 logging_config=ray.LoggingConfig(log_level="WARNING"),
                 runtime_env={"worker_process_setup_hook": "pipelines.runtime.quiet_dashboardless_worker"})
    else:
        try:
            ray.init(address=address, logging_level="WARNING", logging_config=ray.LoggingConfig(log_level="WARNING"))
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise UserError(
                f"cannot reach the Ray cluster at {address!r} ({err}). Start one with `ray start --head` "
                "(then use --address auto), check the ray:// port (10001), or drop --address for a local instance."
            ) from err
    return ray


def is_local_cluster() -> bool:
    """True when no GPU is in the cluster (laptop-sized settings apply)."""
    import ray

    return ray.cluster_resources().get("GPU", 0) == 0
