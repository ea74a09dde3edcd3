"""Every random draw of one training step (docs/method.md, "Guidance as conditioning" and "Time sampling"),
from an explicit generator.

`draw_step` returns a `StepDraws` that the objectives take as an argument, so a
test (or the parity fixture) can fix every draw of a step.
"""

import math
from dataclasses import dataclass, fields, replace

import numpy as np
import torch


@dataclass(frozen=True)
class DrawConfig:
    time_sampler: str = "logit_normal"  # or "uniform"
    P_mean: float = -0.4
    P_std: float = 1.0
    r_P_mean: float | None = None  # None: same law as t
    r_P_std: float | None = None
    ratio_r_neq_t: float = 0.5  # iMF 0.5, original MeanFlow 0.25
    row_selection: str = "positional"  # r = t on the leading rows (authors), or "random"
    omega_max: float = 8.0
    omega_beta: float = 1.0  # density of omega proportional to omega^-beta on [1, omega_max]
    t_min_range: tuple[float, float] = (0.0, 0.5)
    t_max_range: tuple[float, float] = (0.5, 1.0)
    class_dropout: float = 0.1
    dropout_rows: str = "positional"  # dropped rows lead the batch (authors), or "random"

    def __post_init__(self):
        problems = self.problems()
        if problems:
            raise ValueError("invalid draw settings: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """Every invalid setting, each named with its value (empty when all are valid)."""
        problems = []
        if self.time_sampler not in ("logit_normal", "uniform"):
            problems.append(f"time_sampler {self.time_sampler!r} is not 'logit_normal' or 'uniform'")
        for name in ("P_std", "r_P_std"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                problems.append(f"{name} = {value} must be > 0")
        if not 0.0 <= self.ratio_r_neq_t <= 1.0:
            problems.append(f"ratio_r_neq_t = {self.ratio_r_neq_t} must lie in [0, 1]")
        if not self.omega_max >= 1.0:
            problems.append(f"omega_max = {self.omega_max} must be >= 1 (omega = 1 is no guidance)")
        for name in ("t_min_range", "t_max_range"):
            lo, hi = getattr(self, name)
            if not 0.0 <= lo <= hi <= 1.0:
                problems.append(f"{name} = ({lo}, {hi}) must satisfy 0 <= low <= high <= 1")
        if self.t_min_range[1] > self.t_max_range[0]:
            problems.append(f"t_min_range = {tuple(self.t_min_range)} reaches above t_max_range = "
                            f"{tuple(self.t_max_range)}: a CFG interval needs t_min <= t_max, so the t_min range "
                            "must end where the t_max range starts, or below")
        if not 0.0 <= self.class_dropout < 1.0:
            problems.append(f"class_dropout = {self.class_dropout} must lie in [0, 1)")
        for name in ("row_selection", "dropout_rows"):
            if getattr(self, name) not in ("positional", "random"):
                problems.append(f"{name} {getattr(self, name)!r} is not 'positional' or 'random'")
        return problems


@dataclass(frozen=True)
class StepDraws:
    """Per-row draws of one step; all 1-D of length B except `noise` (shaped like the data)."""

    t: torch.Tensor
    r: torch.Tensor
    noise: torch.Tensor
    omega: torch.Tensor
    t_min: torch.Tensor
    t_max: torch.Tensor
    drop: torch.Tensor  # bool: label replaced by the null class, target e - x

    @property
    def boundary(self) -> torch.Tensor:
        """Rows with r = t (plain flow-matching rows)."""
        return self.r == self.t

    def to(self, device=None, dtype=None):
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            float_dtype = dtype if value.is_floating_point() else None
            moved[f.name] = value.to(device=device, dtype=float_dtype)
        return replace(self, **moved)

    def rows(self, index):
        return replace(self, **{f.name: getattr(self, f.name)[index] for f in fields(self)})


def _uniform(n, lo, hi, g):
    return lo + (hi - lo) * torch.rand(n, generator=g, device=g.device)


def sample_times(n, sampler, mean, std, g):
    """n times in (0, 1): sigmoid(N(mean, std)) for "logit_normal", U(0, 1) for "uniform"."""
    if sampler == "uniform":
        return torch.rand(n, generator=g, device=g.device)
    return torch.sigmoid(torch.randn(n, generator=g, device=g.device) * std + mean)


def _leading_or_random(n, count, mode, g):
    mask = torch.arange(n, device=g.device) < count
    if mode == "random":
        mask = mask[torch.randperm(n, generator=g, device=g.device)]
    return mask


def sample_omega(n, omega_max, beta, g):
    """Inverse-CDF draw from density proportional to omega^-beta on [1, omega_max]."""
    u = torch.rand(n, generator=g, device=g.device, dtype=torch.float64)
    if beta == 1.0:
        omega = torch.exp(u * math.log(omega_max))
    else:
        a = 1.0 - beta
        omega = (1.0 + u * (omega_max**a - 1.0)) ** (1.0 / a)
    return omega.float()


def draw_step(batch_size: int, data_shape, cfg: DrawConfig, generator: torch.Generator) -> StepDraws:
    """All draws of one step, in a fixed order, on the generator's device."""
    n, g = batch_size, generator
    r_mean = cfg.P_mean if cfg.r_P_mean is None else cfg.r_P_mean
    r_std = cfg.P_std if cfg.r_P_std is None else cfg.r_P_std
    a = sample_times(n, cfg.time_sampler, cfg.P_mean, cfg.P_std, g)
    b = sample_times(n, cfg.time_sampler, r_mean, r_std, g)
    t, r = torch.maximum(a, b), torch.minimum(a, b)
    boundary = _leading_or_random(n, int(n * (1.0 - cfg.ratio_r_neq_t)), cfg.row_selection, g)
    r = torch.where(boundary, t, r)

    noise = torch.randn((n, *data_shape), generator=g, device=g.device)
    t_min = torch.where(boundary, 0.0, _uniform(n, *cfg.t_min_range, g))
    t_max = torch.where(boundary, 1.0, _uniform(n, *cfg.t_max_range, g))
    omega = sample_omega(n, cfg.omega_max, cfg.omega_beta, g)

    wants_drop = torch.rand(n, generator=g, device=g.device) < cfg.class_dropout
    if cfg.dropout_rows == "positional":
        drop = torch.arange(n, device=g.device) < wants_drop.sum()
    else:
        drop = wants_drop
    return StepDraws(t=t, r=r, noise=noise, omega=omega, t_min=t_min, t_max=t_max, drop=drop)


def step_generator(seed: int, step: int, rank: int = 0, stream: int = 0, device="cpu") -> torch.Generator:
    """A generator whose stream depends only on (seed, step, rank, stream); `stream` separates
    independent uses within one step (e.g. 0: the objective's draws, 1: data augmentation)."""
    state = np.random.SeedSequence((seed, step, rank, stream)).generate_state(2, np.uint32)
    g = torch.Generator(device=device)
    g.manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
    return g
