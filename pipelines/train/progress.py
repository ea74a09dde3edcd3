"""Rank 0's training progress line: steps done of the run, rate, elapsed, ETA, then the curves."""

import time

from ..progress import Progress


class ProgressLine:
    def __init__(self, cfg, schedule, world: int, start_step: int):
        self.cfg, self.schedule, self.world = cfg, schedule, world
        self.progress = Progress("train", schedule.total_steps, "steps", every_s=0, done=start_step)
        self.tick_time, self.tick_step = time.time(), start_step

    def announce(self, model: str, in_memory: bool):
        t, s = self.cfg.train, self.schedule
        source = "held in memory" if in_memory else "streamed by Ray Data"
        print(f"training {model} on {self.world} worker(s), {t.batch_size} images per step, {s.steps_per_epoch} "
              f"steps per epoch (latents {source}), to step {s.total_steps} (from step {self.progress.first})",
              flush=True)

    def tick(self, step: int, images_seen: int) -> dict:
        """Throughput since the previous tick (img/s, s/kimg) and the images seen."""
        now = time.time()
        rate = (step - self.tick_step) * self.cfg.train.batch_size / max(now - self.tick_time, 1e-9)
        self.tick_time, self.tick_step = now, step
        return {"img_per_s": rate, "sec_per_kimg": 1000.0 / max(rate, 1e-9), "kimg": images_seen / 1000}

    def print(self, step: int, metrics: dict, stats: dict):
        quick = f"  quick_fd {metrics['quick_fd']:.4f}" if "quick_fd" in metrics else ""
        curves = (f"mse_u {metrics['mse_u']:.4f}  mse_v {metrics['mse_v']:.4f}  "
                  f"loss(weighted) {metrics['weighted_loss']:.4f}  "
                  f"lr {metrics['lr']:.2e}  img/s {stats['img_per_s']:.1f}  mem {stats['peak_mem_gb']:.2f} GB{quick}")
        self.progress.update(step, curves, force=True)
