"""A worker's batches: held in memory (one read, seeded permutation per epoch) or streamed through Ray Data
with a read-ahead thread that crosses epoch boundaries; both in an order fixed by (seed, epoch, rank)."""

import pytest
import torch

from pipelines.data.shards import read_manifest, shard_files
from pipelines.train.batches import InMemoryRows, StreamedRows, share_bytes

pytestmark = pytest.mark.timeout(600)


def indices(batches):
    return [b["index"].tolist() for b in batches]


def test_in_memory_shares_are_disjoint_equal_and_reshuffled_per_epoch(latents):
    files = shard_files(latents)
    ranks = [InMemoryRows(files, rank, 2, batch_size=8, seed=3) for rank in (0, 1)]
    epoch0 = [sum(indices(r.epoch(0)), []) for r in ranks]
    assert len(epoch0[0]) == len(epoch0[1]) == 32 and not set(epoch0[0]) & set(epoch0[1])  # 64 images, 2 ranks
    assert sorted(epoch0[0]) == sorted(sum(indices(ranks[0].epoch(1)), []))  # each epoch: the same share ...
    assert epoch0[0] != sum(indices(ranks[0].epoch(1)), [])  # ... in another order
    again = InMemoryRows(files, 0, 2, batch_size=8, seed=3)
    assert indices(again.epoch(1)) == indices(ranks[0].epoch(1))  # fixed by (seed, epoch, rank)
    assert indices(again.epoch(1, skip=3)) == indices(ranks[0].epoch(1))[3:]  # a resume joins mid-epoch
    batch = next(iter(again.epoch(0)))
    assert batch["moments"].dtype == torch.float32 and batch["moments"].shape == (8, 2 * 3 * 8 * 8)


def test_streamed_rows_read_ahead_gives_each_epoch_as_a_direct_read_does(latents, ray_session):
    import ray.data

    from pipelines.data.shards import TORCH_DTYPES

    ray.data.DataContext.get_current().execution_options.preserve_order = True
    ds = ray.data.read_parquet(shard_files(latents))
    steps = 64 // 16
    rows = StreamedRows(ds, batch_size=16, seed=2, shuffle_buffer=32, steps_per_epoch=steps, read_ahead=3)
    try:
        got = [indices(rows.epoch(e, skip=1 if e == 0 else 0)) for e in range(2)]
    finally:
        rows.close()

    def direct(epoch):
        return indices(ds.iter_torch_batches(batch_size=16, dtypes=TORCH_DTYPES, drop_last=True,
                                             local_shuffle_buffer_size=32, local_shuffle_seed=2 * 100_003 + epoch))

    first = direct(0)
    assert got == [first[1:], direct(1)]
    assert got[1] != first  # the local shuffle differs per epoch


def test_the_in_memory_threshold_counts_a_workers_float16_share(latents):
    manifest = read_manifest(latents)
    per_row = 2 * 3 * 8 * 8 * 2  # mean and std, float16
    assert share_bytes(manifest, 2) == 64 // 2 * per_row
    assert share_bytes({**manifest, "flip": True}, 1) == 64 * per_row * 2
