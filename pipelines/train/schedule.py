"""When a run does what: its length in steps, and the steps that log, evaluate and checkpoint."""

from dataclasses import dataclass


def total_steps(cfg, num_rows: int, workers: int) -> tuple[int, int]:
    """(steps per epoch, steps of the run) for `num_rows` latents split over `workers` ranks."""
    t = cfg.train
    local = t.batch_size // workers
    per_epoch = num_rows // workers // local
    total = int(t.epochs * per_epoch)
    return per_epoch, min(total, t.max_steps) if t.max_steps else total


@dataclass(frozen=True)
class Schedule:
    steps_per_epoch: int
    total_steps: int
    log_every: int
    checkpoint_every: int
    eval_every: int
    evaluating: bool  # quick_fd is measured (train.eval_samples > 0 and a reference was made)

    @classmethod
    def of(cls, cfg, num_rows: int, workers: int, evaluating: bool = False) -> "Schedule":
        per_epoch, total = total_steps(cfg, num_rows, workers)
        t = cfg.train
        return cls(per_epoch, total, t.log_every, t.checkpoint_every, t.eval_every, evaluating)

    def evaluates(self, step: int, final: bool) -> bool:
        return self.evaluating and (final or bool(self.eval_every and step % self.eval_every == 0))

    def logs(self, step: int, final: bool) -> bool:
        return final or step % self.log_every == 0 or self.evaluates(step, final)

    def checkpoints(self, step: int, final: bool) -> bool:
        return final or step % self.checkpoint_every == 0
