"""The local Ray instance every step starts: its workers run the setup hook that quiets
dashboard-less noise, and leave every other logger alone."""

import logging

import pytest

from pipelines.runtime import NOISY_WITHOUT_DASHBOARD


@pytest.mark.timeout(300)
def test_local_workers_quiet_only_the_loggers_that_need_a_dashboard(ray_session):
    ray = ray_session

    @ray.remote(num_cpus=0.5)
    def levels(names):
        return {name: logging.getLogger(name).level for name in names}

    names = [*NOISY_WITHOUT_DASHBOARD, "ray.train", "ray.data"]
    seen = ray.get(levels.remote(names))
    assert {n: seen[n] for n in NOISY_WITHOUT_DASHBOARD} == NOISY_WITHOUT_DASHBOARD
    assert all(seen[n] < logging.WARNING for n in ("ray.train", "ray.data")), seen
