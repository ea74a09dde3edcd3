"""Training steps/s of `imf train` (Ray Train, 2 CPU workers) against a bare loop over the same tensors.

Both sides run the same `TrainState.step` on the same config (the demo's by default), batch split over
2 processes that all-reduce their gradients with gloo, one thread each:
  bare       two processes started by torch.multiprocessing, the encoded digits' share of each held in
             memory, nothing else: no Ray, no MLflow, no reports, no checkpoints
  imf train  the real command on a local Ray instance, logging to a local MLflow store
The rate of each is taken after a warm-up (imf train: the img/s it logs per window, median over the
windows after the first; bare: the time of the steps after the warm-up). Several epochs pass in the
measured steps (the digits are 18 steps per epoch at batch 64), so a per-epoch stall would show.

    OMP_NUM_THREADS=1 python bench/train_loop.py [--steps 300]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imf_core import draw_step, step_generator  # noqa: E402
from pipelines import cli  # noqa: E402
from pipelines.config import load_config  # noqa: E402
from pipelines.data.shards import read_manifest, shard_files, to_training_batch  # noqa: E402
from pipelines.train.batches import InMemoryRows  # noqa: E402
from pipelines.train.state import TrainState  # noqa: E402


def bare_worker(rank, world, port, latents, config, steps, warmup, result):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    cfg, manifest = load_config(config), read_manifest(latents)
    shape, local = tuple(manifest["latent_shape"]), cfg.train.batch_size // world
    state = TrainState(cfg, shape, manifest["num_classes"], "cpu", with_ema=rank == 0)
    state.broadcast_parameters()
    rows = InMemoryRows(shard_files(latents), rank, world, local, cfg.train.seed)
    epoch, start = 0, None
    while state.progress.step < steps:
        for batch in rows.epoch(epoch):
            step = state.progress.step
            if step == warmup:
                dist.barrier()
                start = time.time()
            if step >= steps:
                break
            x, y = to_training_batch(batch, step_generator(cfg.train.seed, step, rank, stream=1), shape, False)
            draws = draw_step(local, shape, state.draw_cfg, step_generator(cfg.train.seed, step, rank))
            state.step(x, y, draws, state.learning_rate(rows.steps_per_epoch))
        epoch += 1
    if rank == 0:
        result.put((steps - warmup) / (time.time() - start))
    dist.destroy_process_group()


def bare_loop(latents, config, steps, warmup, world=2) -> float:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    result = ctx.Queue()
    procs = [ctx.Process(target=bare_worker, args=(r, world, port, latents, config, steps, warmup, result))
             for r in range(world)]
    for p in procs:
        p.start()
    rate = result.get(timeout=3600)
    for p in procs:
        p.join()
    return rate


def imf_train(latents, config, steps, tmp: Path, world=2) -> tuple[float, int]:
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp}/mlflow.db"
    argv = ["train", "--data", str(latents), "--config", str(config), "--workers", str(world), "--storage",
            str(tmp / "runs"), "--name", "bench", "--tracking-uri", store, "--max-steps", str(steps),
            "--set", "train.checkpoint_every=100000", "--set", "train.sample_every=0"]
    assert cli.main(argv) == 0
    client = MlflowClient(store)
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()], "attributes.run_name='bench'")
    windows = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "img_per_s"), key=lambda m: m.step)]
    batch = load_config(config).train.batch_size
    return statistics.median(windows[1:]) / batch, len(windows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--config", default=str(ROOT / "pipelines" / "configs" / "demo.yaml"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imf_bench_train_") as tmp:
        tmp = Path(tmp)
        assert cli.main(["data", "embedded", "--out", str(tmp / "images")]) in (0, None)
        assert cli.main(["encode", "--images", str(tmp / "images"), "--out", str(tmp / "latents"), "--codec",
                         "pixels", "--resolution", "8", "--grayscale"]) == 0
        bare = bare_loop(tmp / "latents", args.config, args.steps, args.warmup)
        ours, windows = imf_train(tmp / "latents", args.config, args.steps, tmp)
    print(f"\n{'path':12s} {'steps/s':>8s}\n{'bare loop':12s} {bare:8.2f}\n{'imf train':12s} {ours:8.2f}  "
          f"(median of {windows - 1} logged windows after the first)")
    print(f"imf train / bare loop: {ours / bare:.3f}  (target >= 0.8)")


if __name__ == "__main__":
    main()
