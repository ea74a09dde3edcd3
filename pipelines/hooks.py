"""The one way tests reach into a running step: record it, pause it or slow it down at named points.

A test installs hooks with a JSON file {"module": "/abs/path/to/hooks.py", ...its settings}: in the process
itself with `installed(path)`, or in a process it starts with IMF_TEST_HOOKS=path in that process's
environment. The steps call `at(point, **context)`; with no hooks installed that returns at once, and no other
code of the product reads the setting. The training driver, `imf sample` and `imf encode` pass it on to the Ray
workers and actors they start (which may run on other nodes, in other environments), through `current()`.

Points, and what a hook module's function of that name receives (its settings dict first):
    train_worker_started(settings, worker)   a training worker restored its state, before its first step
    train_step(settings, worker, index)      before each training step; index: the batch's row indices
    train_worker_finished(settings, worker)  the worker's loop ended (done, preempted or stopped)
    sample_shard(settings, shard)            before `imf sample` generates a shard
    encode_shard(settings, shard)            before `imf encode` encodes a shard
    evaluate_batch(settings, count)          before `imf evaluate` scans a batch; count: images scanned so far
"""

import contextlib
import importlib.util
import json
import os
from pathlib import Path

ENV = "IMF_TEST_HOOKS"
_installed: str | None = None
_loaded: dict = {}


def current() -> str | None:
    """The installed hooks file, to pass on to the processes a step starts."""
    return _installed or os.environ.get(ENV) or None


@contextlib.contextmanager
def installed(path):
    global _installed
    previous, _installed = _installed, str(path)
    try:
        yield
    finally:
        _installed = previous


def install(path: str | None):
    """In a worker or actor, the setting its driver passed on (None: none)."""
    global _installed
    _installed = path


def at(point: str, **context):
    path = current()
    if path is None:
        return
    if path not in _loaded:
        settings = json.loads(Path(path).read_text())
        spec = importlib.util.spec_from_file_location("imf_test_hooks", settings["module"])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _loaded[path] = (module, settings)
    module, settings = _loaded[path]
    hook = getattr(module, point, None)
    if hook is not None:
        hook(settings, **context)
