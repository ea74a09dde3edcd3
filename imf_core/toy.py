"""A class-conditional 2-D Gaussian mixture and a small MLP with the imfDiT interface.

Used by the learning test and by bench/toy_objectives.py to compare objectives cheaply.
"""

import math

import torch
import torch.nn as nn


def mixture_centers(num_classes: int, radius: float = 2.0):
    angles = torch.arange(num_classes, dtype=torch.float32) * (2 * math.pi / num_classes)
    return radius * torch.stack((torch.cos(angles), torch.sin(angles)), dim=1)


def sample_mixture(n, num_classes, generator, std=0.15, labels=None):
    """n points; class c is a pair of Gaussians at centre c and 0.5 x centre c (two modes per class)."""
    g = generator
    if labels is None:
        labels = torch.randint(num_classes, (n,), generator=g)
    centers = mixture_centers(num_classes)[labels]
    inner = torch.rand(n, generator=g) < 0.5
    centers = torch.where(inner[:, None], 0.5 * centers, centers)
    return centers + std * torch.randn(n, 2, generator=g), labels


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """2 E|A - B| - E|A - A'| - E|B - B'| (V-statistics), >= 0, 0 iff same distribution."""
    ab = torch.cdist(a, b).mean()
    aa = torch.cdist(a, a).mean()
    bb = torch.cdist(b, b).mean()
    return float(2 * ab - aa - bb)


class ToyMLP(nn.Module):
    """(u, v) = net(x, t, h, omega, t_min, t_max, y) for x of shape (B, dim)."""

    def __init__(self, num_classes, dim=2, width=128, depth=3, v_head=True):
        super().__init__()
        self.num_classes, self.has_v_head = num_classes, v_head
        self.label = nn.Embedding(num_classes + 1, 32)
        cond_dim = 5 + 32  # raw scalars: high frequencies in t make du/dt noisy
        layers, d = [], dim + cond_dim
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.SiLU()]
            d = width
        self.trunk = nn.Sequential(*layers)
        self.u_out = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, dim))
        self.v_out = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, dim)) if v_head else None

    def forward(self, x, t, h, omega, t_min, t_max, y):
        cond = torch.stack((t, h, 1 - 1 / omega, t_min, t_max), dim=1).to(x.dtype)
        features = self.trunk(torch.cat([x, cond, self.label(y)], dim=1))
        return self.u_out(features), (self.v_out(features) if self.v_out is not None else None)


def train_toy(objective, num_classes=4, steps=1500, batch=256, lr=1e-3, draw_cfg=None, seed=0, log_every=0):
    """Train a ToyMLP on the mixture with `objective` (Adam, cosine decay); returns the network."""
    from .draws import DrawConfig, draw_step

    torch.manual_seed(seed)
    net = ToyMLP(num_classes)
    draw_cfg = draw_cfg or DrawConfig()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        x, y = sample_mixture(batch, num_classes, g)
        out = objective(net, x, y, draw_step(batch, (2,), draw_cfg, g))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        schedule.step()
        if log_every and step % log_every == 0:
            print(f"step {step:5d}  loss {out.loss.item():.4f}  mse_u {out.mse_u.item():.4f}", flush=True)
    return net


def toy_distance(net, num_classes=4, steps=1, n=2000, omega=1.0, seed=123):
    """Class-averaged energy distance between k-step samples and fresh mixture data."""
    from .sampling import sample

    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    ref, _ = sample_mixture(n, num_classes, g, labels=labels)
    z = sample(net, torch.randn(n, 2, generator=g), labels, omega=omega, steps=steps)
    per_class = [energy_distance(z[labels == c], ref[labels == c]) for c in range(num_classes)]
    return sum(per_class) / num_classes
