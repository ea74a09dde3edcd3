"""A shard damaged after the driver's check (during the run) ends the run with a message naming it, not a traceback.

A worker reads its latents once (in memory) or epoch by epoch (Ray Data); a read that fails with a pyarrow or
I/O error is caught here. Every rank then stops after the same step: after each batch is fetched, the ranks
all-reduce one flag (did every rank get its batch?), so that no rank waits in the next step's collectives for a
rank that has none. The rank whose read failed finds the damaged shard by checking the footers again
(data/latent_check.py) and tells the run's status actor; the driver prints that message, keeps the last
checkpoint as it was, and exits with status 2. The function returns normally on every rank, so Ray Train logs
no worker traceback.
"""

import pyarrow as pa
import torch
import torch.distributed as dist

from ..data.latent_check import shard_problems
from ..errors import UserError
from ..storage import Location

READ_ERRORS = (pa.ArrowException, OSError)


def is_read_error(err: BaseException) -> bool:
    """A pyarrow or I/O error, raised here or in a Ray Data task (RayTaskError(OSError) is an OSError too)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, READ_ERRORS):
            return True
        seen.add(id(err))
        err = getattr(err, "cause", None) or err.__cause__
    return False


def first_line(err: BaseException) -> str:
    cause = getattr(err, "cause", None) or err
    lines = [line for line in str(cause).splitlines() if line.strip()]
    return lines[0] if lines else cause.__class__.__name__


def describe_read_failure(err: BaseException, data, manifest: dict) -> str:
    """One message naming the damaged shard (found by checking the footers again) and the fix."""
    data = Location.of(data)
    try:
        problems = shard_problems(data, manifest)
    except Exception:  # noqa: BLE001 - the folder itself may be gone; the read error is still the message
        problems = []
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        return f"a latent shard was damaged during the run: {problems[0]}{more}"
    return (f"reading the latent set {data} failed during the run ({first_line(err)}): a shard was damaged behind "
            "an intact footer, or the storage failed; re-copy or re-encode the set")


class UnreadableRows:
    """The rows of a worker whose in-memory read failed: the failure comes out of the first batch, where every
    rank hears of it."""

    def __init__(self, error: BaseException):
        self.error = error

    def epoch(self, epoch: int, skip: int = 0):
        raise self.error
        yield  # a generator, as the other rows' epoch()

    def close(self):
        pass


def read_rows(make):
    """make() (a worker's rows), or UnreadableRows when the read fails with a read error."""
    try:
        return make()
    except Exception as err:
        if not is_read_error(err):
            raise
        return UnreadableRows(err)


class ReadGuard:
    """Wraps a worker's batches: they end on every rank as soon as one rank's read fails."""

    def __init__(self, data, manifest: dict, device):
        self.data, self.manifest, self.device = data, manifest, device
        self.message = None  # this rank's failure, named
        self.stopped = False  # some rank's read failed

    def _all_read(self, ok: bool) -> bool:
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return ok
        flag = torch.tensor([float(ok)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def batches(self, batches, finished):
        """The items of `batches` until finished() or a failed read on any rank."""
        while not finished():
            failure = None
            try:
                item = next(batches)
            except StopIteration:
                return
            except Exception as err:
                if not is_read_error(err):
                    raise
                failure = err
            if not self._all_read(failure is None):
                if failure is not None:
                    self.message = describe_read_failure(failure, self.data, self.manifest)
                self.stopped = True
                return
            yield item

    def tell_driver(self, status):
        """This rank's message to the run's status actor (waited for: the run ends right after)."""
        import ray

        if self.message is None:
            return
        if status is None:
            raise UserError(self.message)
        ray.get(status.set_read_failure.remote(self.message))
