"""k-step sampler on the uniform grid from t = 1 (noise) to t = 0 (data), METHOD.md §8."""

import torch

from .objectives import _call


def _per_row(value, n, like):
    value = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    return value.expand(n) if value.dim() == 0 else value.to(torch.float32)


@torch.no_grad()
def sample(net, noise, labels, omega=1.0, t_min=0.0, t_max=1.0, steps=1):
    """z_r = z_t - (t - r) u(z_t | h = t - r, c, omega, t_min, t_max); 1-NFE is steps = 1.

    omega, t_min, t_max: a number or one value per row. Returns z_0 in the data space.
    """
    if steps < 1:
        raise ValueError(f"steps = {steps} must be >= 1")
    n, z = noise.shape[0], noise
    omega, t_min, t_max = (_per_row(v, n, noise) for v in (omega, t_min, t_max))
    grid = torch.linspace(1.0, 0.0, steps + 1, device=noise.device)
    for i in range(steps):
        t = grid[i].expand(n)
        r = grid[i + 1].expand(n)
        u = _call(net, "u", z, t, t - r, omega, t_min, t_max, labels)
        z = z - (t - r).view(-1, *([1] * (z.dim() - 1))).to(z.dtype) * u
    return z


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] to uint8 as clip(127.5 x + 128), the ADM/authors' rounding."""
    return (images.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
