"""The local Ray instance every step starts: its workers run the setup hook that quiets
noise of an instance without dashboard or autoscaler, and leave every other logger alone."""

import logging
import logging.config

import pytest

from pipelines.runtime import NOISY_ON_LOCAL_INSTANCES


@pytest.mark.timeout(300)
def test_local_workers_quiet_only_the_loggers_noisy_on_local_instances(ray_session):
    """Also after Ray Train has configured its loggers in that process, as its controller does (dictConfig of
    `ray.train`, which resets the levels of the loggers below it)."""
    ray = ray_session

    @ray.remote(num_cpus=0.5)
    def passes(names):
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False,
                                   "loggers": {"ray.train": {"level": "DEBUG"}}})
        return {name: [logging.getLogger(name).isEnabledFor(level) and logging.getLogger(name).filter(
                    logging.LogRecord(name, level, __file__, 0, "m", None, None))
                       for level in (logging.WARNING, logging.ERROR)] for name in names}

    names = [*NOISY_ON_LOCAL_INSTANCES, "ray.train", "ray.data"]
    seen = ray.get(passes.remote(names))
    quiet = {n: [logging.WARNING >= level, logging.ERROR >= level] for n, level in NOISY_ON_LOCAL_INSTANCES.items()}
    assert {n: seen[n] for n in NOISY_ON_LOCAL_INSTANCES} == quiet
    assert all(seen[n][0] is False for n in NOISY_ON_LOCAL_INSTANCES)  # each of them drops warnings
    assert seen["ray.train"] == seen["ray.data"] == [True, True], seen


@pytest.mark.timeout(300)
def test_local_workers_drop_only_ray_datas_interrupted_completion_thread(ray_session):
    """A thread named as Ray Data's completion thread, interrupted, prints nothing in a worker of a local instance;
    the same error in any other thread, and another error in that thread, still print their traceback."""
    ray = ray_session

    @ray.remote(num_cpus=0.5)
    def printed(cases):
        import contextlib
        import io
        import threading

        out = {}
        for name, error in cases:
            def fail(error=error):
                raise {"InterruptedError": InterruptedError, "ValueError": ValueError}[error]("stop")

            stderr = io.StringIO()
            with contextlib.redirect_stderr(stderr):
                thread = threading.Thread(target=fail, name=name)
                thread.start()
                thread.join()
            out[f"{name}/{error}"] = "Traceback" in stderr.getvalue()
        return out

    cases = [("pool-1/completion-signaler", "InterruptedError"), ("worker-3", "InterruptedError"),
             ("pool-1/completion-signaler", "ValueError")]
    assert ray.get(printed.remote(cases)) == {"pool-1/completion-signaler/InterruptedError": False,
                                              "worker-3/InterruptedError": True,
                                              "pool-1/completion-signaler/ValueError": True}
