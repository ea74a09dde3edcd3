"""Preemption: SIGTERM (what spot instances and Kubernetes send before they take a machine) or Ctrl-C to the
`imf train` driver, or SIGTERM to any training worker, ends the run at the next step boundary with a checkpoint,
and the command exits with status PREEMPTED; `imf train ... --resume RUN` continues from that checkpoint as if
nothing happened.

    driver   its SIGTERM and SIGINT handler tells the run's status actor (`request_stop`)
    worker   its SIGTERM handler sets a flag in its own process (runtime.defer_sigterm, installed by the
             worker_process_setup_hook of local instances; on a cluster Ray's handler ends the worker and
             --max-failures restarts the group from the latest checkpoint)
    ranks    after every step each rank all-reduces (max) one flag: its own SIGTERM, or (rank 0) the status
             actor's answer, polled without waiting. Every rank thus stops after the same step.
"""

import signal
import threading

import torch
import torch.distributed as dist

from ..runtime import SIGTERM_LISTENING as _listening
from ..runtime import SIGTERM_REQUESTED as _requested

PREEMPTED = 75  # EX_TEMPFAIL: try again later (with --resume)


class StopAgreement:
    """One rank's view of whether the run stops now; `agreed()` is a collective: every rank calls it after
    every step."""

    def __init__(self, status, rank: int, device):
        self.status, self.rank, self.device = status, rank, device
        self.pending = None
        self.stop_asked = False
        _requested.clear()
        _listening.set()

    def _asked_by_driver(self) -> bool:
        import ray

        if self.status is None or self.rank != 0:
            return False
        if self.pending is None:
            self.pending = self.status.stop_requested.remote()
        ready, _ = ray.wait([self.pending], timeout=0)
        if ready:
            self.stop_asked, self.pending = bool(ray.get(self.pending)), None
        return self.stop_asked

    def agreed(self) -> bool:
        local = _requested.is_set() or self._asked_by_driver()
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return local
        flag = torch.tensor([float(local)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def close(self):
        _listening.clear()


class DriverStop:
    """While a run is fitted: SIGTERM or Ctrl-C to the driver asks the workers to stop (through the status actor)
    instead of ending the driver; a second Ctrl-C ends it at once. The previous handlers come back afterwards."""

    SIGNALS = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}

    def __init__(self, status):
        self.status, self.previous, self.received = status, {}, None

    def _handler(self, signum, frame):
        if self.received is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.received = self.SIGNALS[signum]
        print(f"imf train: {self.received} received; stopping at the next step boundary with a checkpoint "
              "(Ctrl-C again to stop at once)", flush=True)
        self.status.request_stop.remote()

    def __enter__(self):
        from .. import ray_seams

        if threading.current_thread() is threading.main_thread():
            ray_seams.keep_sigint_handler_through_fit()
            self.previous = {signum: signal.signal(signum, self._handler) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        return False
