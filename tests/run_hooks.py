"""The tests' hooks (pipelines/hooks.py), loaded by file path in every process of a run: each writes into
settings["dir"]. Write a settings file with `hooks_file` and install it (`hooks.installed` in this process,
IMF_TEST_HOOKS in a process the test starts)."""

import json
import os
import time
from pathlib import Path

_pause_s = {}  # per worker process: the pause read when it started


def hooks_file(folder, **settings) -> Path:
    """folder/hooks.json naming this module; settings: sample_slow_s (seconds before each shard after the first),
    gate (true: every shard of imf sample and imf encode, and every batch of imf evaluate, waits for the file
    `open` in the folder)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "hooks.json"
    path.write_text(json.dumps({"module": str(Path(__file__).resolve()), "dir": str(folder.resolve()), **settings}))
    return path


def train_worker_started(settings, worker):
    """pid_rank{R}; and the pause before each step from the file pause_per_step_s, read once (a run slow enough
    to be signalled midway)."""
    Path(settings["dir"], f"pid_rank{worker.rank}").write_text(str(os.getpid()))
    pause = Path(settings["dir"], "pause_per_step_s")
    _pause_s[worker.rank] = float(pause.read_text()) if pause.exists() else 0.0


def train_step(settings, worker, index):
    """batches_rank{R}.jsonl: the step and its batch's row indices, one line per step."""
    with open(Path(settings["dir"], f"batches_rank{worker.rank}.jsonl"), "a") as f:
        f.write(json.dumps({"step": worker.state.progress.step, "index": index.tolist()}) + "\n")
    time.sleep(_pause_s.get(worker.rank, 0.0))


def train_worker_finished(settings, worker):
    """params_rank{R}.safetensors: the worker's weights at the end."""
    from imf_core.checkpoint import save_tensors

    save_tensors(Path(settings["dir"], f"params_rank{worker.rank}.safetensors"), worker.state.model.state_dict())


def sample_shard(settings, shard):
    """Leave time to kill an `imf sample` job between its shards (sample_slow_s); then _hold."""
    if shard > 0:
        time.sleep(settings.get("sample_slow_s", 0))
    _hold(settings, "sample_shard", shard=shard)


def encode_shard(settings, shard):
    _hold(settings, "encode_shard", shard=shard)


def evaluate_batch(settings, count):
    _hold(settings, "evaluate_batch", count=count)


def _hold(settings, point, **context):
    """begun.jsonl: the point, the process and its context, one line each time; then, with the setting gate, wait
    until the test creates the file `open` in the folder (or for 10 minutes)."""
    folder = Path(settings["dir"])
    with open(folder / "begun.jsonl", "a") as f:
        f.write(json.dumps({"point": point, "pid": os.getpid(), **context}) + "\n")
    deadline = time.time() + 600
    while settings.get("gate") and not (folder / "open").exists() and time.time() < deadline:
        time.sleep(0.1)


def begun(folder, point=None) -> list[dict]:
    """The records of _hold, of one point or all."""
    path = Path(folder, "begun.jsonl")
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [r for r in records if point in (None, r["point"])]
