"""A worker's training batches, epoch after epoch, in an order fixed by (seed, epoch, rank).

Two sources, chosen by the driver from the size of a worker's share of the latents:
- `InMemoryRows`: the share is read once (rows rank, rank + world, ... of the shards in manifest
  order) and kept as float16 moments; each epoch is a seeded permutation of it, so an epoch boundary
  costs nothing and a resume jumps straight to its batch.
- `StreamedRows`: the Ray Data shard (`get_dataset_shard`), read epoch by epoch with Ray Data's local
  shuffle. A background thread reads ahead into the next epoch while this one is still being trained
  on, so the start of each epoch's read (seconds on a small machine) is not a stall.
Both yield dicts with `index`, `label`, `moments` (and `moments_flip`), as `to_training_batch` takes.
"""

import queue
import threading

import numpy as np
import pyarrow as pa
import torch

from ..data.shards import TORCH_DTYPES, read_shard

COLUMNS = ("index", "label", "moments", "moments_flip")


def share_bytes(manifest: dict, world: int) -> int:
    """Bytes of float16 moments one worker would hold in memory."""
    per_row = 2 * int(np.prod(manifest["latent_shape"])) * 2 * (2 if manifest.get("flip") else 1)
    return int(manifest["counts"]["encoded"]) // world * per_row


class InMemoryRows:
    def __init__(self, files: list, rank: int, world: int, batch_size: int, seed: int, shuffle: bool = True):
        table = pa.concat_tables([read_shard(f) for f in files])  # paths or Locations
        rows = np.arange(rank, len(table), world)[: len(table) // world]  # equal shares: equal step counts
        part = table.take(pa.array(rows))
        self.columns = {"index": torch.from_numpy(part.column("index").to_numpy().astype(np.int64)),
                        "label": torch.from_numpy(part.column("label").to_numpy().astype(np.int64))}
        for name in ("moments", "moments_flip"):
            if name in part.column_names:
                flat = part.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
                self.columns[name] = torch.from_numpy(flat.reshape(len(rows), -1).copy())
        self.rank, self.batch_size, self.seed, self.shuffle = rank, batch_size, seed, shuffle
        self.steps_per_epoch = len(rows) // batch_size

    def epoch(self, epoch: int, skip: int = 0):
        order = torch.arange(len(self.columns["index"]))
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 1009 + self.rank)
            order = torch.randperm(len(order), generator=g)
        for i in range(skip, self.steps_per_epoch):
            rows = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield {k: v[rows].to(TORCH_DTYPES[k]) for k, v in self.columns.items()}

    def close(self):
        pass


class StreamedRows:
    def __init__(self, shard, batch_size: int, seed: int, shuffle_buffer: int, steps_per_epoch: int,
                 read_ahead: int = 64):
        self.shard, self.batch_size, self.seed, self.buffer = shard, batch_size, seed, shuffle_buffer
        self.steps_per_epoch, self.read_ahead = steps_per_epoch, read_ahead
        self._queue, self._thread, self._stop = None, None, threading.Event()

    def _read(self, epoch: int):
        return self.shard.iter_torch_batches(
            batch_size=self.batch_size, dtypes=TORCH_DTYPES, drop_last=True,
            local_shuffle_buffer_size=self.buffer or None, local_shuffle_seed=self.seed * 100_003 + epoch)

    def _produce(self, epoch: int, skip: int):
        try:
            while not self._stop.is_set():
                for i, batch in enumerate(self._read(epoch)):
                    if i >= self.steps_per_epoch or self._stop.is_set():
                        break
                    if i >= skip:
                        self._put((epoch, batch))
                self._put((epoch, None))  # the end of an epoch
                epoch, skip = epoch + 1, 0
        except BaseException as err:  # noqa: BLE001 - handed to the training thread, which raises it
            self._put(err)

    def _put(self, item):
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def epoch(self, epoch: int, skip: int = 0):
        if self._thread is None:
            self._queue = queue.Queue(maxsize=self.read_ahead)
            self._thread = threading.Thread(target=self._produce, args=(epoch, skip), daemon=True,
                                            name="imf-read-ahead")
            self._thread.start()
        while True:
            item = self._queue.get()
            if isinstance(item, BaseException):
                raise item
            got, batch = item
            if got != epoch:
                raise RuntimeError(f"read-ahead out of step: expected epoch {epoch}, got {got}")
            if batch is None:
                return
            yield batch

    def close(self):
        self._stop.set()
