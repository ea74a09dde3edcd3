"""The per-worker training loop run by Ray Train's TorchTrainer: batches in, steps, reports, checkpoints.

Determinism: every draw of a step comes from generators keyed by (seed, step, rank), and each rank's
data order is fixed by (seed, epoch, rank) (batches.py); a resumed run skips the batches already
consumed in its epoch and continues exactly as an uninterrupted run would.
"""

import logging
import os
import resource
import tempfile
from pathlib import Path

import torch

from imf_core import draw_step, step_generator

from .. import hooks, ray_seams
from ..data.shards import dataset_summary, shard_locations, to_training_batch
from ..tracking import TolerantLogger
from .batches import InMemoryRows, StreamedRows
from .payload import WorkerPayload
from .preemption import StopAgreement
from .progress import ProgressLine
from .read_guard import ReadGuard, read_rows
from .schedule import Schedule
from .state import StepResult, TrainState


def peak_memory_gb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def quiet_report_lines():
    """Ray Train logs an INFO line per report and rank beside our progress line; its LoggingConfig does not
    reach them (ray_seams.report_logger)."""
    logger = ray_seams.report_logger()
    if logger is not None:
        logger.setLevel(logging.WARNING)


class Worker:
    """One rank's run: its state, data, schedule, and (rank 0) the MLflow logger and monitors."""

    def __init__(self, payload: WorkerPayload):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.payload, self.rank, self.world = payload, ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 2) // max(1, ctx.get_local_world_size())))
        self.cfg, self.manifest = payload.config, payload.manifest
        self.latent_shape = tuple(self.manifest["latent_shape"])
        self.state = self._restore()
        evaluating = bool(self.cfg.train.eval_samples) and payload.reference is not None
        self.schedule = Schedule.of(self.cfg, payload.num_rows, self.world, evaluating)
        self.rows = self._rows()
        self.logger = self.grids = self.quick = None
        if self.rank == 0:
            self._rank0_extras()

    def _restore(self) -> TrainState:
        import ray.train

        state = TrainState(self.cfg, self.latent_shape, self.manifest["num_classes"], self.device,
                           with_ema=self.rank == 0)
        state.broadcast_parameters()
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                state.load(directory)
        elif self.payload.resume_path:
            state.load(self.payload.resume_path)
        return state

    def _rows(self):
        import ray.train

        t, local = self.cfg.train, self.cfg.train.batch_size // self.world
        if self.payload.in_memory:
            return read_rows(lambda: InMemoryRows(shard_locations(self.payload.data), self.rank, self.world, local,
                                                  t.seed))
        return StreamedRows(ray.train.get_dataset_shard("train"), local, t.seed, t.shuffle_buffer,
                            self.schedule.steps_per_epoch)

    def _rank0_extras(self):
        from .monitors import QuickEval, SampleGrids

        if self.payload.run_id:
            self.logger = TolerantLogger(self.payload.tracking_uri, self.payload.run_id)
        self.grids = SampleGrids(self.state, self.manifest)
        if self.schedule.evaluating:
            self.quick = QuickEval(self.state, self.manifest, *self.payload.reference)

    def batches(self):
        """(step's x, y, index) from the current position to the end of the run, epoch after epoch."""
        p, t = self.state.progress, self.cfg.train
        while p.step < self.schedule.total_steps:
            for batch in self.rows.epoch(p.epoch, skip=p.batch_in_epoch):
                if p.step >= self.schedule.total_steps:
                    return
                x, y = to_training_batch(batch, step_generator(t.seed, p.step, self.rank, stream=1),
                                         self.latent_shape, t.flip)
                yield x.to(self.device), y.to(self.device), batch["index"]
            p.next_epoch()

    def finished(self) -> bool:
        return self.state.progress.step >= self.schedule.total_steps

    def step(self, x, y, index) -> StepResult:
        p, t = self.state.progress, self.cfg.train
        hooks.at("train_step", worker=self, index=index)
        draws = draw_step(len(x), self.latent_shape, self.state.draw_cfg, step_generator(t.seed, p.step, self.rank))
        lr = self.state.learning_rate(self.schedule.steps_per_epoch)
        return self.state.step(x, y, draws.to(self.device, dtype=torch.float32), lr)

    def report(self, metrics: dict, progress: ProgressLine, stop: bool = False):
        """Log, evaluate, checkpoint as the schedule says at this step (every rank reports equally often);
        stop: the run is preempted after this step, so it checkpoints whatever the schedule says."""
        import ray.train

        p, t, s = self.state.progress, self.cfg.train, self.schedule
        final = p.step >= s.total_steps
        if self.quick is not None and s.evaluates(p.step, final):
            metrics.update(self.quick())
        if s.logs(p.step, final):
            stats = {**progress.tick(p.step, p.images_seen), "peak_mem_gb": peak_memory_gb(self.device),
                     "epoch": p.epoch}
            if self.rank == 0:
                progress.print(p.step, metrics, stats)
                if self.logger:
                    self.logger.metrics({**metrics, **stats}, step=p.step)
        report = {"step": p.step, "epoch": p.epoch, **metrics}
        if stop or s.checkpoints(p.step, final):
            self._checkpoint(report, sample_now=final or bool(t.sample_every and p.step % t.sample_every == 0))
        elif s.logs(p.step, final):
            ray.train.report(report)

    def _checkpoint(self, report: dict, sample_now: bool):
        import ray.train

        if self.rank != 0:
            ray.train.report(report)
            return
        with tempfile.TemporaryDirectory(prefix="imf_ckpt_") as tmp:
            self.state.save(tmp, extra={"data": str(self.payload.data), "dataset": dataset_summary(self.manifest)})
            for path in self.grids(Path(tmp) / "samples") if sample_now else []:
                if self.logger:
                    self.logger.artifact(path, f"samples/step_{self.state.progress.step:07d}")
            ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    def preempted(self):
        import ray

        if self.rank == 0:
            print(f"preempted: stopped after step {self.state.progress.step} with a checkpoint", flush=True)
            if self.payload.status is not None:
                ray.get(self.payload.status.set_preempted.remote(self.state.progress.step))

    def stop_nonfinite(self, step: int):
        import ray
        import ray.train

        if self.rank == 0:
            print(f"stopping: the loss is not finite at step {step}; the last checkpoint is kept as it was", flush=True)
            if self.logger:
                self.logger.tag("nonfinite_step", step)  # for people reading the run; the driver asks the status
            if self.payload.status is not None:
                ray.get(self.payload.status.set_nonfinite.remote(step))
        ray.train.report({"step": self.state.progress.step, "nonfinite_step": step})


def controller_gone(err: BaseException) -> bool:
    """Whether a report failed because the run's controller is gone, as when ASHA stops a trial (Ray would print
    the worker's traceback)."""
    return ray_seams.synchronization_actor_died(err)


def train_loop_per_worker(config: dict):
    """Ray Train's entry: config = {"payload": WorkerPayload}."""
    payload: WorkerPayload = config["payload"]
    hooks.install(payload.hooks)
    quiet_report_lines()
    worker = Worker(payload)
    hooks.at("train_worker_started", worker=worker)
    progress = ProgressLine(worker.cfg, worker.schedule, worker.world, worker.state.progress.step)
    if worker.rank == 0:
        progress.announce(worker.cfg.model.name, payload.in_memory)
    stop = StopAgreement(payload.status, worker.rank, worker.device)
    guard = ReadGuard(payload.data, worker.manifest, worker.device)
    try:
        for x, y, index in guard.batches(worker.batches(), worker.finished):
            step = worker.state.progress.step
            result = worker.step(x, y, index)
            if not result.finite:
                worker.stop_nonfinite(step)
                break
            preempted = stop.agreed() and worker.state.progress.step < worker.schedule.total_steps
            worker.report(result.metrics, progress, stop=preempted)
            if preempted:
                worker.preempted()
                break
    except Exception as err:
        if not controller_gone(err):
            raise
        return  # Tune stopped this trial (or the driver died): nobody is left to report to
    finally:
        stop.close()
        worker.rows.close()
    guard.tell_driver(payload.status)
    hooks.at("train_worker_finished", worker=worker)
