"""The per-worker training loop run by Ray Train's TorchTrainer.

Determinism: every draw of a step comes from generators keyed by (seed, step, rank),
and each rank's data order is fixed by the shard split (Ray Data preserves order)
and the per-epoch local-shuffle seed; so a resumed run skips the batches already
consumed in its epoch and continues exactly as an uninterrupted run would.
"""

import copy
import json
import logging
import os
import resource
import tempfile
import time
from pathlib import Path

import torch

from imf_core import draw_step, sample, step_generator
from imf_core.codecs import codec_from_description

from .config import config_from_dict
from .images import save_grid
from .shards import TORCH_DTYPES, to_training_batch
from .tracking import TolerantLogger
from .train_state import TrainState


def peak_memory_gb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def dataset_summary(manifest: dict) -> dict:
    """What a registered model needs to know of its training data (codec, shapes, classes)."""
    keys = ("codec", "latent_shape", "resolution", "num_classes", "class_names", "flip")
    return {k: manifest.get(k) for k in keys}


class SampleGrids:
    """1-NFE sample grids from the first EMA at fixed seeds, one PNG per omega (rank 0)."""

    def __init__(self, state: TrainState, manifest: dict):
        self.state, self.manifest, self.codec, self.net = state, manifest, None, None
        self.failed = False

    def __call__(self, out_dir: Path) -> list[Path]:
        if self.failed:
            return []
        s, cfg = self.state, self.state.cfg.sampling
        if self.codec is None:
            try:
                self.codec = codec_from_description(self.manifest["codec"], device=s.device)
            except Exception as err:  # noqa: BLE001 - grids are a convenience, never a failure
                print(f"sample grids disabled: cannot load the codec ({err})", flush=True)
                self.failed = True
                return []
            self.net = copy.deepcopy(s.model).eval()
        s.ema.copy_to(self.net)
        classes = min(self.manifest["num_classes"], cfg.max_classes)
        labels = torch.arange(classes, device=s.device).repeat_interleave(cfg.per_class)
        g = torch.Generator().manual_seed(cfg.seed)
        noise = torch.randn((len(labels), *self.manifest["latent_shape"]), generator=g).to(s.device)
        paths = []
        for omega in cfg.omegas:
            with s.autocast():
                z = sample(self.net, noise, labels, omega=omega, t_min=cfg.t_min, t_max=cfg.t_max, steps=1)
            images = self.codec.decode(z.float())
            paths.append(save_grid(images, out_dir / f"omega_{omega:g}.png", columns=cfg.per_class,
                                   scale=max(1, 64 // images.shape[-1])))
        return paths


def quiet_report_lines():
    """Ray Train logs an INFO line per report and rank beside our progress line; its LoggingConfig does not
    reach them, since that module logs under its file path rather than under `ray.train`."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: leave its logging as it is
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def train_loop_per_worker(payload: dict):
    import ray.train
    import ray.train.torch

    quiet_report_lines()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // max(1, ctx.get_local_world_size())))
    cfg = config_from_dict(payload["config"])
    manifest = payload["manifest"]
    latent_shape = tuple(manifest["latent_shape"])
    debug_dir = payload.get("debug_dir")  # tests: pids, batch indices and final weights per rank
    if debug_dir:
        Path(debug_dir, f"pid_rank{rank}").write_text(str(os.getpid()))

    state = TrainState(cfg, latent_shape, manifest["num_classes"], device, with_ema=rank == 0)
    state.broadcast_parameters()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state.load(directory)
    elif payload.get("resume_path"):
        state.load(payload["resume_path"])

    t = cfg.train
    local_batch = t.batch_size // world
    steps_per_epoch = payload["num_rows"] // world // local_batch
    total_steps = int(t.epochs * steps_per_epoch)
    if t.max_steps:
        total_steps = min(total_steps, t.max_steps)
    logger = TolerantLogger(payload["tracking_uri"], payload["run_id"]) if rank == 0 and payload.get("run_id") else None
    grids = SampleGrids(state, manifest) if rank == 0 else None
    quick = None
    if t.eval_samples and payload.get("reference") is not None:
        from .quick_eval import QuickEval

        quick = QuickEval(state, manifest, *payload["reference"]) if rank == 0 else (lambda: {})
    shard = ray.train.get_dataset_shard("train")
    p = state.progress
    if rank == 0:
        print(f"training {cfg.model.name} on {world} worker(s), {t.batch_size} images per step, "
              f"{steps_per_epoch} steps per epoch, to step {total_steps} (from step {p.step})", flush=True)

    tick_time, tick_step, last = time.time(), p.step, {}
    nonfinite_step = None
    while p.step < total_steps and nonfinite_step is None:
        batches = shard.iter_torch_batches(
            batch_size=local_batch, dtypes=TORCH_DTYPES, drop_last=True,
            local_shuffle_buffer_size=t.shuffle_buffer or None, local_shuffle_seed=t.seed * 100_003 + p.epoch,
        )
        for i, batch in enumerate(batches):
            if i < p.batch_in_epoch:
                continue  # consumed before a resume
            if p.step >= total_steps:
                break
            x, y = to_training_batch(batch, step_generator(t.seed, p.step, rank, stream=1), latent_shape, t.flip)
            x, y = x.to(device), y.to(device)
            draws = draw_step(local_batch, latent_shape, state.draw_cfg, step_generator(t.seed, p.step, rank))
            if debug_dir:
                with open(Path(debug_dir, f"batches_rank{rank}.jsonl"), "a") as f:
                    f.write(json.dumps({"step": p.step, "index": batch["index"].tolist()}) + "\n")
            out = state.loss(x, y, draws.to(device, dtype=torch.float32))
            out.loss.backward()
            lr = state.learning_rate(steps_per_epoch)
            step_at = p.step
            mean_loss, grad_norm = state.apply_gradients(out.loss, lr)
            if not torch.isfinite(torch.tensor(mean_loss)):
                nonfinite_step = step_at
                break
            p.batch_in_epoch, p.images_seen = i + 1, p.images_seen + t.batch_size
            last = {**out.metrics(), "loss": mean_loss, "grad_norm": grad_norm, "lr": lr}

            final = p.step >= total_steps
            is_eval = quick is not None and (final or (t.eval_every and p.step % t.eval_every == 0))
            is_checkpoint = p.step % t.checkpoint_every == 0 or final
            is_log = p.step % t.log_every == 0 or final or is_eval
            if is_eval and rank == 0:
                last.update(quick())
            if is_log:
                elapsed = time.time() - tick_time
                rate = (p.step - tick_step) * t.batch_size / max(elapsed, 1e-9)
                tick_time, tick_step = time.time(), p.step
                stats = {"img_per_s": rate, "sec_per_kimg": 1000.0 / max(rate, 1e-9),
                         "peak_mem_gb": peak_memory_gb(device), "kimg": p.images_seen / 1000, "epoch": p.epoch}
                if rank == 0:
                    quick_note = f"  quick_fd {last['quick_fd']:.4f}" if "quick_fd" in last else ""
                    print(f"step {p.step:7d}/{total_steps}  kimg {stats['kimg']:9.1f}  img/s {rate:8.1f}  "
                          f"sec/kimg {stats['sec_per_kimg']:7.2f}  loss {mean_loss:.4f}  mse_u {last['mse_u']:.4f}  "
                          f"mse_v {last['mse_v']:.4f}  lr {lr:.2e}  mem {stats['peak_mem_gb']:.2f} GB{quick_note}",
                          flush=True)
                    if logger:
                        logger.metrics({**last, **stats}, step=p.step)
            if is_checkpoint:
                _report_with_checkpoint(state, rank, p, last, logger, grids, payload,
                                        sample_now=rank == 0 and (final or (t.sample_every and p.step % t.sample_every == 0)))
            elif is_log:
                ray.train.report({"step": p.step, "epoch": p.epoch, **last})
            for key in [k for k in last if k.startswith("quick_")]:
                del last[key]  # reported once, at the step it was measured
        else:
            p.epoch, p.batch_in_epoch = p.epoch + 1, 0

    if debug_dir:
        from imf_core.checkpoint import save_tensors

        save_tensors(Path(debug_dir, f"params_rank{rank}.safetensors"), state.model.state_dict())
    if nonfinite_step is not None:
        if rank == 0:
            print(f"stopping: the loss is not finite at step {nonfinite_step}; the last checkpoint is kept as it was",
                  flush=True)
            if logger:
                logger.tag("nonfinite_step", nonfinite_step)
            if payload.get("status") is not None:
                import ray

                ray.get(payload["status"].set_nonfinite.remote(nonfinite_step))
        ray.train.report({"step": p.step, "nonfinite_step": nonfinite_step})


def _report_with_checkpoint(state, rank, p, metrics, logger, grids, payload, sample_now):
    import ray.train

    report = {"step": p.step, "epoch": p.epoch, **metrics}
    if rank != 0:
        ray.train.report(report)
        return
    with tempfile.TemporaryDirectory(prefix="imf_ckpt_") as tmp:
        state.save(tmp, extra={"data": payload.get("data"), "dataset": dataset_summary(payload["manifest"])})
        if sample_now:
            paths = grids(Path(tmp) / "samples")
            for path in paths:
                if logger:
                    logger.artifact(path, f"samples/step_{p.step:07d}")
        ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp))
