import os

import pytest
import torch

from tests.s3_server import S3Server, use_test_keys

use_test_keys()  # before any Ray worker starts: the S3 tests' fake keys reach every worker

# Local Ray instances of the tests listen on loopback only (read when Ray is first imported).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


# `make test` runs the suite on two pytest-xdist workers (--dist loadgroup): each file is one unit of work, so its
# module fixtures run once; files that read the same session fixture form one unit; the longest units go first.
SHARED = {"tests/test_readme.py": "readme", "tests/tune/test_sweep.py": "readme",
          "tests/pipelines/train/test_train.py": "streamed run", "tests/pipelines/train/test_train_s3.py": "streamed run"}
LONGEST_FIRST = ["readme", "tests/pipelines/test_node_loss.py", "tests/pipelines/train/test_preemption.py",
                 "streamed run",
                 "tests/pipelines/ops/test_submit_cluster.py", "tests/pipelines/train/test_quality.py",
                 "tests/pipelines/generate/test_sample.py", "tests/pipelines/data/test_encode_s3.py",
                 "tests/bench/test_bench_smoke.py", "tests/pipelines/serve/test_app.py",
                 "tests/pipelines/data/test_encode.py", "tests/pipelines/generate/test_sample_s3.py"]


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    unit = {}
    for item in items:
        path = item.path.relative_to(config.rootpath).as_posix()
        unit[item] = SHARED.get(path, path)
        item.add_marker(pytest.mark.xdist_group(unit[item]))
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(unit[item], len(rank)))


def randomize(net: torch.nn.Module, std: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Replace every parameter (zero-initialised gates and final layers too) with small random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


@pytest.fixture
def micro_net():
    from imf_core import build_model

    torch.manual_seed(0)
    return randomize(build_model("Micro/2", input_size=8, in_channels=4, num_classes=10)).double()


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (started on first use)."""
    from pipelines.runtime import start_ray

    ray = start_ray(None, num_cpus=4)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def readme_walkthrough(tmp_path_factory):
    """The README's walkthrough, run once: (its folder, what each block's process did)."""
    from tests.walkthrough import run_walkthrough

    folder = tmp_path_factory.mktemp("readme")
    return folder, run_walkthrough(folder)


@pytest.fixture(scope="session")
def s3():
    """A real S3 API (moto's HTTP server) on a free port of 127.0.0.1; AWS_ENDPOINT_URL points at it."""
    server = S3Server()
    before = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = server.endpoint
    yield server
    if before is None:
        os.environ.pop("AWS_ENDPOINT_URL", None)
    else:
        os.environ["AWS_ENDPOINT_URL"] = before
    server.stop()
