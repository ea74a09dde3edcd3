"""A shard damaged during a run (pipelines/train/read_guard.py): the worker's failed read becomes one message naming
the shard, and every rank stops after the same step, so that none waits for a rank that has no batch."""

import os

import pyarrow as pa
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from pipelines.data.shards import read_manifest
from pipelines.errors import UserError
from pipelines.train.batches import InMemoryRows
from pipelines.train.read_guard import ReadGuard, UnreadableRows, describe_read_failure, is_read_error, read_rows
from tests.pipelines.latent_sets import write_latent_set

pytestmark = pytest.mark.timeout(120)
SHARD1 = "shards/shard-00001.parquet"


class TaskError(Exception):
    """As Ray's RayTaskError: the task's exception in `cause`."""

    def __init__(self, cause):
        super().__init__("ray::ReadFiles() failed")
        self.cause = cause


@pytest.fixture
def latents(tmp_path):
    return write_latent_set(tmp_path / "latents")


def cut_short(latents):
    path = latents / SHARD1
    path.write_bytes(path.read_bytes()[:300])


def failing_after(n, error):
    yield from range(n)
    raise error


def test_read_errors_are_told_apart_from_other_failures():
    assert is_read_error(pa.ArrowInvalid("Parquet magic bytes not found"))
    assert is_read_error(OSError("ZSTD decompression failed"))
    assert is_read_error(TaskError(OSError("Failed to read fragment")))
    assert not is_read_error(RuntimeError("CUDA out of memory"))
    assert not is_read_error(TaskError(ValueError("a bug")))


def test_a_shard_cut_short_after_the_check_is_named_from_its_footer(latents):
    manifest = read_manifest(latents)
    cut_short(latents)
    rows = read_rows(lambda: InMemoryRows([latents / s for s in manifest["shards"]], 0, 1, 8, seed=0))
    assert isinstance(rows, UnreadableRows)
    guard = ReadGuard(latents, manifest, "cpu")
    assert list(guard.batches(iter(rows.epoch(0)), finished=lambda: False)) == []
    assert guard.stopped and "shard-00001.parquet is not a readable Parquet file" in guard.message
    with pytest.raises(UserError, match="shard-00001.parquet"):
        guard.tell_driver(status=None)


def test_damage_behind_an_intact_footer_names_the_set_and_the_fix(latents):
    message = describe_read_failure(TaskError(OSError("ZSTD decompression failed\nFailed to read fragment")),
                                    latents, read_manifest(latents))
    assert f"reading the latent set {latents} failed during the run (ZSTD decompression failed)" in message
    assert "re-copy or re-encode" in message and "\n" not in message


def test_batches_end_at_a_failed_read_and_other_errors_pass(latents):
    guard = ReadGuard(latents, {}, "cpu")
    assert list(guard.batches(failing_after(3, OSError("gone")), finished=lambda: False)) == [0, 1, 2]
    assert guard.stopped and "failed during the run (gone)" in guard.message
    with pytest.raises(RuntimeError, match="a bug"):
        list(ReadGuard(latents, {}, "cpu").batches(failing_after(1, RuntimeError("a bug")), finished=lambda: False))
    done = ReadGuard(latents, {}, "cpu")
    assert list(done.batches(iter(range(10)), finished=iter([False, False, True]).__next__)) == [0, 1]
    assert not done.stopped and done.message is None


def two_ranks(rank, folder):
    os.environ.update(MASTER_ADDR="127.0.0.1")
    dist.init_process_group("gloo", rank=rank, world_size=2, init_method=f"file://{folder}/store")
    guard = ReadGuard(folder, {}, "cpu")
    batches = failing_after(2, OSError("gone")) if rank == 1 else iter(range(10))
    got = list(guard.batches(batches, finished=lambda: False))
    with open(f"{folder}/rank{rank}", "w") as f:
        f.write(f"{got} {guard.stopped} {guard.message is not None}")
    dist.destroy_process_group()


def test_every_rank_stops_after_the_same_batch_when_one_rank_cannot_read(tmp_path):
    mp.spawn(two_ranks, args=(str(tmp_path),), nprocs=2, join=True)
    assert (tmp_path / "rank0").read_text() == "[0, 1] True False"  # stopped with the others, nothing to tell
    assert (tmp_path / "rank1").read_text() == "[0, 1] True True"  # its own failure, to tell the driver
