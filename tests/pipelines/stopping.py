"""Sending SIGTERM or Ctrl-C (SIGINT) to real `imf` processes, to the process alone and to its whole process group,
the cases of a command side by side (tests/pipelines/test_signals.py, tests/pipelines/ops/test_submit_cluster.py)."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.run_hooks import hooks_file

ROOT = Path(__file__).resolve().parents[2]
CASES = [(signal.SIGTERM, "alone"), (signal.SIGTERM, "group"), (signal.SIGINT, "alone"), (signal.SIGINT, "group")]
USUAL = [(signal.SIGTERM, "alone"), (signal.SIGINT, "group")]  # `kill` or a container's stop; Ctrl-C in a terminal
NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}
DUMPS = ("Traceback", "*** SIGTERM received", "*** SIGINT received", "Aborted", "core dumped", "Fatal Python error")


class Stoppable:
    """An `imf` process in a session of its own (its process group is its pid), its output gathered as it comes."""

    def __init__(self, argv, folder: Path):
        self.folder, self.lines = folder, []
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
               "IMF_TEST_HOOKS": str(hooks_file(folder / "hooks", gate=True))}
        self.proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *argv], cwd=folder, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()
        self.family = []

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def send(self, signum, way):
        self.family = psutil.Process(self.proc.pid).children(recursive=True)
        if way == "group":
            os.killpg(self.proc.pid, signum)
        else:
            self.proc.send_signal(signum)

    def end(self, timeout=180):
        """(exit status, output, processes it started that are still alive)."""
        status = self.proc.wait(timeout=timeout)
        alive = survivors(self.family)
        time.sleep(0.5)  # the reader thread takes the last lines
        return status, self.text, alive


def survivors(family: list, grace: float = 20) -> list[str]:
    """Names of the processes of `family` (a command's descendants, taken before it was stopped) still running
    `grace` seconds on; they are killed, so that a failing test leaves nothing behind."""
    _, alive = psutil.wait_procs(family, timeout=grace)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for p in alive:
        p.kill()
    return [p.name() for p in alive]


def dumps(text: str) -> list[str]:
    """The marks of a stack dump or traceback in a command's output."""
    return [d for d in DUMPS if d in text]


def stop_each_way(tmp_path, argv_in, ready, timeout=300, cases=CASES) -> list:
    """Start one process per case (argv_in(folder) -> argv), signal each once ready(process) holds; the results
    [(signal, way, status, output, survivors)]."""
    runs = []
    for signum, way in cases:
        folder = tmp_path / f"{signal.Signals(signum).name}-{way}"
        folder.mkdir()
        runs.append((signum, way, Stoppable(argv_in(folder), folder)))
    pending, deadline = list(runs), time.time() + timeout
    while pending and time.time() < deadline:
        for run in list(pending):
            signum, way, proc = run
            if proc.proc.poll() is not None:
                pytest.fail(f"{way} {signum!r}: ended before it was ready ({proc.proc.returncode}):\n"
                            f"{proc.text[-3000:]}")
            if ready(proc):
                proc.send(signum, way)
                pending.remove(run)
        time.sleep(0.2)
    assert not pending, f"not ready in {timeout} s: {[(s, w, p.text[-2000:]) for s, w, p in pending]}"
    return [(signum, way, *proc.end()) for signum, way, proc in runs]


def assert_stopped(results, status_of, line_of):
    for signum, way, status, text, left in results:
        case = f"{NAMES[signum]} to the {'process group' if way == 'group' else 'process alone'}"
        assert status == status_of(signum), f"{case}: exit {status}\n{text[-3000:]}"
        assert line_of(signum) in text, f"{case}: no {line_of(signum)!r}\n{text[-3000:]}"
        assert not dumps(text), f"{case}: a dump or traceback\n{text[-3000:]}"
        assert not left, f"{case}: left running: {left}"


def batch_status(signum):
    return 143 if signum == signal.SIGTERM else 130
