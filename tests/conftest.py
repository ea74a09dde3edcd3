import os

import pytest
import torch

from tests.s3_server import S3Server, use_test_keys

use_test_keys()  # before any Ray worker starts: the S3 tests' fake keys reach every worker

# Local Ray instances of the tests listen on loopback only (read when Ray is first imported).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


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
    """(folder, block runs) of the README's walkthrough, run once per session (tests/readme_walkthrough.py)."""
    from tests.readme_walkthrough import run_walkthrough

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
