import os

import pytest
import torch

from tests.s3_server import S3Server, use_test_keys

use_test_keys()  # before any Ray worker starts: the S3 tests' fake keys reach every worker

# Local Ray instances of the tests listen on loopback only (read when Ray is first imported).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


# `make test` runs the suite on two pytest-xdist workers: each file is one unit of work, so that its module fixtures
# run once; files that read the same session or package fixture form one unit (the docs' walkthrough; the streamed
# reference run; the Serve app); the longest units go first (per-file times of a serial run), so that neither worker
# is left with a long one at the end. (xdist's own `xdist_group` marks do nothing under pytest 9: they rewrite a node
# id that is read-only now.)
SHARED = {"tests/test_walkthrough.py": "walkthrough", "tests/tune/test_sweep.py": "walkthrough",
          "tests/pipelines/train/test_train.py": "streamed run",
          "tests/pipelines/train/test_train_s3.py": "streamed run",
          "tests/pipelines/serve/test_app.py": "serve", "tests/pipelines/serve/test_clients.py": "serve"}
LONGEST_FIRST = ["walkthrough", "streamed run", "tests/pipelines/test_signals.py",
                 "tests/pipelines/train/test_preemption.py", "tests/pipelines/train/test_quality.py",
                 "tests/pipelines/test_node_loss.py",
                 "tests/pipelines/ops/test_submit_cluster.py", "tests/bench/test_bench_smoke.py",
                 "tests/pipelines/data/test_encode.py", "tests/pipelines/generate/test_sample.py",
                 "serve", "tests/pipelines/data/test_encode_s3.py",
                 "tests/pipelines/train/test_batches.py", "tests/pipelines/generate/test_sample_s3.py"]


def unit_of(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return SHARED.get(path, path)


def pytest_collection_modifyitems(config, items):
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(unit_of(item.nodeid), len(rank)))  # stable: a file keeps its own order


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from tests.xdist_seams import scheduler_by

    return scheduler_by(unit_of, config, log)


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
def walkthrough(tmp_path_factory):
    """(folder, block runs) of the docs' pipeline walkthrough, run once per session (tests/doc_blocks.py)."""
    from tests.doc_blocks import WALKTHROUGH, run_blocks

    folder = tmp_path_factory.mktemp("walkthrough")
    return folder, run_blocks(folder, WALKTHROUGH)


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
