"""Progress lines of long steps: done/total, rate, elapsed time and ETA, one line per interval.

The same line on a terminal and in a log file (no bars, no carriage returns), so that a job's log
read later says how far it got and how fast.
"""

import sys
import time


def clock(seconds: float) -> str:
    """Seconds as H:MM:SS (or M:SS under an hour)."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """`update(done)` prints at most one line per `every_s` seconds, and always the last one."""

    def __init__(self, what: str, total: int, unit: str, every_s: float = 10.0, done: int = 0, stream=None):
        self.what, self.total, self.unit, self.every_s = what, total, unit, every_s
        self.start, self.first, self.last_print = time.time(), done, 0.0
        self.stream = stream  # None: sys.stdout at print time (a Tune callback holding it must pickle)

    def line(self, done: int, extra: str = "") -> str:
        elapsed = time.time() - self.start
        rate = (done - self.first) / elapsed if elapsed > 0 else 0.0
        eta = clock((self.total - done) / rate) if rate > 0 else "?"
        share = f" ({100 * done / self.total:.0f}%)" if self.total else ""
        text = (f"{self.what}: {done}/{self.total} {self.unit}{share}  {rate:.3g} {self.unit}/s  "
                f"elapsed {clock(elapsed)}  ETA {eta}")
        return f"{text}  {extra}" if extra else text

    def update(self, done: int, extra: str = "", force: bool = False):
        now = time.time()
        if force or done >= self.total or now - self.last_print >= self.every_s:
            self.last_print = now
            print(self.line(done, extra), file=self.stream or sys.stdout, flush=True)
