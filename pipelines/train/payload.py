"""What the training driver hands every worker of a run (Ray pickles it; the config arrives validated)."""

from dataclasses import dataclass

from ..config import TrainConfig
from ..storage import Location


@dataclass
class WorkerPayload:
    config: TrainConfig
    manifest: dict  # the latent set's manifest.json
    num_rows: int
    in_memory: bool  # each worker reads its share once (batches.InMemoryRows), else Ray Data streams it
    data: Location
    status: object = None  # the run's RunStatus actor (driver.run_status_actor)
    tracking_uri: str | None = None
    run_id: str | None = None  # the MLflow run rank 0 logs to
    resume_path: str | None = None  # a checkpoint folder to start from
    reference: tuple | None = None  # quick_fd's reference images (monitors.reference_images)
    hooks: str | None = None  # tests only: pipelines/hooks.py
