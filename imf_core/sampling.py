"""k-step sampler on the uniform grid from t = 1 (noise) to t = 0 (data) (docs/method.md, "Sampling")."""

import torch

from .objectives import _call


def _per_row(value, n, like):
    value = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    return value.expand(n) if value.dim() == 0 else value.to(torch.float32)


@torch.no_grad()
def sample(net, noise, labels, omega=1.0, t_min=0.0, t_max=1.0, steps=1, instantaneous=False):
    """z_r = z_t - (t - r) u(z_t | h = t - r, c, omega, t_min, t_max); 1-NFE is steps = 1.

    omega, t_min, t_max: a number or one value per row. instantaneous: query h = 0 at every step, i.e. Euler
    steps on the velocity v(z_t) (a network trained by flow matching knows no other h). Returns z_0.
    """
    if steps < 1:
        raise ValueError(f"steps = {steps} must be >= 1")
    n, z = noise.shape[0], noise
    omega, t_min, t_max = (_per_row(v, n, noise) for v in (omega, t_min, t_max))
    grid = torch.linspace(1.0, 0.0, steps + 1, device=noise.device)
    for i in range(steps):
        t = grid[i].expand(n)
        r = grid[i + 1].expand(n)
        u = _call(net, "u", z, t, torch.zeros_like(t) if instantaneous else t - r, omega, t_min, t_max, labels)
        z = z - (t - r).view(-1, *([1] * (z.dim() - 1))).to(z.dtype) * u
    return z


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] to uint8 as clip(127.5 x + 128), the ADM/authors' rounding."""
    return (images.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def index_noise(seed, indices, shape) -> torch.Tensor:
    """The noise of images `indices` of a seeded request: image i's comes from a generator seeded by (seed, i)
    alone, so it is the same whatever the batch, the worker or the entry point (batch job, pyfunc, server).
    `seed`: the request's seed, or one seed per index (rows of several requests in one batch)."""
    import numpy as np

    indices = [int(i) for i in indices]
    seeds = [int(s) for s in seed] if np.ndim(seed) else [int(seed)] * len(indices)
    if len(seeds) != len(indices):
        raise ValueError(f"{len(seeds)} seeds for {len(indices)} indices: give one seed, or one per index")

    def generator(s, i):
        state = np.random.SeedSequence((s, i)).generate_state(1, np.uint64)[0]
        return torch.Generator().manual_seed(int(state >> np.uint64(1)))

    return torch.stack([torch.randn(tuple(shape), generator=generator(s, i)) for s, i in zip(seeds, indices)])


@torch.no_grad()
def generate(net, codec, noise, labels, omega=1.0, t_min=0.0, t_max=1.0, steps=1, batch_size=256,
             autocast=None, instantaneous=False) -> torch.Tensor:
    """Sample and decode: uint8 images (N, C, H, W) on the CPU. `autocast`: a context factory for the network
    (e.g. bf16 on a GPU); the codec decodes in its own precision. Guidance values: numbers or one per row."""
    import contextlib

    device = next(net.parameters()).device
    n = noise.shape[0]
    omega, t_min, t_max = (_per_row(v, n, noise) for v in (omega, t_min, t_max))
    out = []
    for rows in torch.arange(n).split(batch_size):
        with (autocast or contextlib.nullcontext)():
            z = sample(net, noise[rows].to(device), labels[rows].to(device), omega=omega[rows].to(device),
                       t_min=t_min[rows].to(device), t_max=t_max[rows].to(device), steps=steps,
                       instantaneous=instantaneous)
        out.append(to_uint8(codec.decode(z.float())).cpu())
    return torch.cat(out)
