import os

import pytest
import torch

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
