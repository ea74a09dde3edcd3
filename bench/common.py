"""Set-up shared by the benchmark scripts (run as `python bench/NAME.py`, so this imports as `common`)."""

import contextlib

import torch


def randomize(net: torch.nn.Module, std: float = 0.02) -> torch.nn.Module:
    """Small random values on every parameter: zero-initialised gates and heads would make every
    implementation trivially cheap. Draws from the global generator (seed it first)."""
    with torch.no_grad():
        for p in net.parameters():
            p.add_(std * torch.randn_like(p))
    return net


def autocast_for(device: torch.device, dtype: str):
    """A context factory: bf16 autocast on the device for dtype "bf16", nothing otherwise."""
    if dtype == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext
