"""What the Serve application is asked for (AppSpec): the model, batching, replicas and their resources.

Plain data, importable without Ray Serve: `imf serve`'s parser and the RayService's `args` both build it.
"""

from dataclasses import dataclass

from ..errors import UserError

QUIET = {"enable_access_log": False, "log_level": "WARNING"}  # Serve's logging for the proxy and replicas


@dataclass
class AppSpec:
    """The application: which model, how requests are batched, how replicas are placed and scaled."""
    model: str
    tracking_uri: str | None = None
    max_batch_size: int = 32
    batch_wait_ms: float = 1.0
    max_images: int = 32
    num_replicas: str = "1"
    min_replicas: int = 1
    max_replicas: int = 4
    target_ongoing_requests: float | None = None
    upscale_delay_s: float | None = None
    gpus_per_replica: float | None = None
    cpus_per_replica: float = 1.0
    ingress_replicas: int = 1
    poll_seconds: float = 10.0

    def check(self):
        for name in ("max_batch_size", "max_images", "min_replicas", "max_replicas", "ingress_replicas"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)} must be >= 1")
        if self.max_images > self.max_batch_size:
            raise UserError(f"--max-images {self.max_images} is above --max-batch-size {self.max_batch_size}: "
                            "a request's images go through the network in one batch")
        if self.batch_wait_ms < 0 or self.poll_seconds <= 0 or self.cpus_per_replica < 0:
            raise UserError("--batch-wait-ms and --cpus-per-replica must be >= 0, --poll-seconds > 0")
        if self.upscale_delay_s is not None and self.upscale_delay_s < 0:
            raise UserError(f"--upscale-delay-s {self.upscale_delay_s} must be >= 0 (seconds of load before a "
                            "replica is added)")
        replicas = str(self.num_replicas)
        if not (replicas == "auto" or replicas.isdigit() and int(replicas) >= 1):
            raise UserError(f"--num-replicas {replicas!r}: a number >= 1, or auto (between --min-replicas and "
                            "--max-replicas, scaled on ongoing requests)")
        if replicas == "auto" and self.min_replicas > self.max_replicas:
            raise UserError(f"--min-replicas {self.min_replicas} is above --max-replicas {self.max_replicas}")
