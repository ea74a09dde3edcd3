"""Preemption (issue 13): SIGTERM to the `imf train` driver or to a worker stops the run at the next step
boundary with a checkpoint and exit status 75; `--resume` then ends bit-identical (model, EMA, optimizer,
data position) to an uninterrupted run. The driver's run is also where a 2-worker local training is checked
to listen on loopback only, and, as every command in test_signals.py, to end with no stack dump or traceback
and no process of its own left behind."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from pipelines.train.preemption import PREEMPTED
from tests.pipelines.listening import exposed, listening
from tests.pipelines.stopping import dumps, survivors
from tests.pipelines.train_helpers import batch_log, train, write_config
from tests.run_hooks import hooks_file

pytestmark = pytest.mark.timeout(600)
ROOT = Path(__file__).resolve().parents[3]
STEPS = 24  # 4 steps per epoch
PAUSE_S = 0.25  # per step of the runs that get signalled: a step alone takes about 0.07 s, and the stop (driver ->
# status actor -> rank 0, polled once a step) takes longer than the rest of the run on a busy machine
BOUND_S = 60  # from SIGTERM to the exit of the command (most of it: Ray Train and Ray shutting down)
FILES = ("model/model.safetensors", "ema.safetensors", "optimizer.safetensors", "optimizer.json")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, latents):
    tmp = tmp_path_factory.mktemp("preempt")
    config = write_config(tmp / "c.yaml", max_steps=STEPS, checkpoint_every=STEPS, log_every=STEPS)
    assert train(latents, config, tmp / "runs", "whole", debug=tmp / "d_whole") == 0
    return latents, config, tmp / "runs"


def checkpoints(run: Path) -> dict[int, Path]:
    """step -> checkpoint folder of a run."""
    return {json.loads(p.read_text())["step"]: p.parent for p in run.glob("checkpoint_*/progress.json")}


def assert_resumed_identical(runs: Path, name: str, debug: Path):
    whole, parts = checkpoints(runs / "whole")[STEPS], checkpoints(runs / name)[STEPS]
    for file in FILES:
        assert (whole / file).read_bytes() == (parts / file).read_bytes(), file
    progress = [json.loads((p / "progress.json").read_text()) for p in (whole, parts)]
    assert {k: progress[0][k] for k in ("step", "epoch", "batch_in_epoch", "images_seen")} == \
        {k: progress[1][k] for k in ("step", "epoch", "batch_in_epoch", "images_seen")}
    log = batch_log(debug, 0)
    assert [e["step"] for e in log] == list(range(STEPS))  # no step lost, none done twice
    assert log == batch_log(runs.parent / "d_whole", 0)


def preempted_step(runs: Path, name: str) -> int:
    steps = [s for s in checkpoints(runs / name) if s < STEPS]
    assert len(steps) == 1, checkpoints(runs / name)  # the run wrote one checkpoint: where it stopped
    return steps[0]


def signal_when(debug: Path, rank: int, pid_of, before=None, at_step=2, timeout=300) -> dict:
    """A thread that sends SIGTERM to pid_of() once rank `rank` has begun step `at_step` (after calling
    before(), whose answer it keeps); the dict it returns gets the time it was sent."""
    sent = {}

    def watch():
        deadline = time.time() + timeout
        while time.time() < deadline and not sent:
            if any(e["step"] >= at_step for e in batch_log(debug, rank)):
                sent["before"] = before() if before else None
                os.kill(pid_of(), signal.SIGTERM)
                sent["at"] = time.monotonic()
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    return sent


def driver_process(argv, hooks) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "IMF_TEST_HOOKS": str(hooks)}
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_sigterm_to_a_worker_then_to_the_driver_and_resume_is_bit_identical(setup, tmp_path, capsys):
    """One run stopped twice: SIGTERM to a worker (in-process driver), then, resumed in a process of its own,
    SIGTERM to that driver (whose local Ray and workers are listed first); a last --resume ends the run."""
    latents, config, runs = setup
    debug = tmp_path / "debug"
    debug.mkdir()
    (debug / "pause_per_step_s").write_text(str(PAUSE_S))
    sent = signal_when(debug, 1, lambda: int((debug / "pid_rank1").read_text()))
    assert train(latents, config, runs, "stopped", debug=debug) == PREEMPTED
    worker_exit = time.monotonic() - sent["at"]
    out = capsys.readouterr().out
    assert "preempted (SIGTERM)" in out and "--resume stopped" in out
    first = preempted_step(runs, "stopped")
    assert 2 <= first < STEPS and worker_exit < BOUND_S, (first, worker_exit)

    argv = ["train", "--data", str(latents), "--config", str(config), "--workers", "2", "--storage", str(runs),
            "--name", "stopped", "--tracking-uri", f"sqlite:///{runs}/mlflow.db", "--resume", "stopped"]
    proc = driver_process(argv, hooks=hooks_file(debug))
    sent = signal_when(debug, 0, lambda: proc.pid, at_step=first + 2,
                       before=lambda: (listening(proc.pid), psutil.Process(proc.pid).children(recursive=True)))
    text, _ = proc.communicate(timeout=480)
    driver_exit = time.monotonic() - sent["at"]
    sockets, family = sent["before"]
    assert len(sockets) >= 5 and not exposed(sockets), f"listening beyond loopback: {exposed(sockets)}"
    assert proc.returncode == PREEMPTED and "preempted (SIGTERM)" in text, text[-2000:]
    assert "Continue with the same command and --resume stopped" in text, text[-2000:]
    assert not dumps(text), f"a dump or traceback:\n{text[-3000:]}"
    left = survivors(family)
    assert not left, f"left running: {left}"
    second = max(s for s in checkpoints(runs / "stopped"))
    assert first < second < STEPS and driver_exit < BOUND_S, (second, driver_exit)

    (debug / "pause_per_step_s").unlink()
    assert train(latents, config, runs, "stopped", debug=debug, extra=["--resume", "stopped"]) == 0
    assert_resumed_identical(runs, "stopped", debug)
    print(f"\nworker SIGTERM: checkpoint at step {first}, exit {worker_exit:.1f} s after the signal; driver SIGTERM: "
          f"checkpoint at step {second}, exit {driver_exit:.1f} s after; {len(sockets)} listening sockets, all on "
          "loopback; resumed bit-identical")
