"""Training configuration: one YAML file, validated before any worker starts.

Defaults are the paper's ImageNet-256 recipe (METHOD.md §3-§5, §9). Every key of
a file must be known; every problem is reported at once, naming the key.
"""

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from imf_core import SIZES
from imf_core.draws import DrawConfig

from .errors import UserError


@dataclass
class ModelSection:
    name: str = "B/2"
    overrides: dict = field(default_factory=dict)  # e.g. {aux_head_depth: 4}; input/classes come from the data


@dataclass
class ObjectiveSection:
    kind: str = "imf"  # imf | mf | fm
    tangent: str = "aux"  # aux | boundary
    norm_p: float = 1.0
    norm_eps: float = 0.01
    fast: bool = True  # the optimised step (imf_core.FastIMFObjective; same loss and gradients)
    mf_omega: float = 1.0  # original MeanFlow only
    mf_kappa: float = 0.5
    fm_guided: bool = False  # flow matching only


@dataclass
class OptimSection:
    lr: float = 1e-4
    betas: tuple = (0.9, 0.95)
    weight_decay: float = 0.0
    warmup_epochs: float = 10.0
    grad_clip: float | None = None


@dataclass
class TrainSection:
    batch_size: int = 1024  # global, over all workers
    epochs: float = 640.0
    max_steps: int | None = None  # stop earlier than `epochs`
    seed: int = 0
    ema_decays: tuple = (0.9999,)
    ema_warmup: bool = False  # cap the decay at (1 + step) / (10 + step): for short runs
    bf16: bool = True  # autocast on GPU; CPU runs stay fp32
    flip: bool = False
    log_every: int = 100
    checkpoint_every: int = 5000
    keep_checkpoints: int = 3
    sample_every: int = 0  # 0: only at the end
    shuffle_buffer: int = 10000
    eval_every: int = 0  # steps between quick_fd evaluations (0: only at the end when eval_samples > 0)
    eval_samples: int = 0  # 1-NFE samples (and reference images) per quick_fd evaluation; 0: off


@dataclass
class SamplingSection:
    omegas: tuple = (1.0, 4.0, 8.0)
    t_min: float = 0.4
    t_max: float = 0.65
    per_class: int = 4
    max_classes: int = 10
    seed: int = 0


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    draws: dict = field(default_factory=dict)  # imf_core.DrawConfig fields
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    sampling: SamplingSection = field(default_factory=SamplingSection)

    def draw_config(self) -> DrawConfig:
        return DrawConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in self.draws.items()})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict:
        """{"optim.lr": 1e-4, ...} with the draw settings filled in: what MLflow logs as params."""
        out = {}
        full = self.to_dict()
        full["draws"] = dataclasses.asdict(self.draw_config())
        for section, values in full.items():
            for key, value in values.items():
                out[f"{section}.{key}"] = value
        return out


SECTIONS = {f.name: f for f in fields(TrainConfig)}


def _build_section(cls, values, name, problems):
    if not isinstance(values, dict):
        problems.append(f"{name}: expected a mapping, got {type(values).__name__}")
        return cls()
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        problems.append(f"{name}: unknown key(s) {', '.join(unknown)} (known: {', '.join(known)})")
    kwargs = {}
    for key, value in values.items():
        if key in known:
            default = getattr(cls(), key)
            if isinstance(default, tuple) and isinstance(value, list):
                value = tuple(value)
            kwargs[key] = value
    return cls(**kwargs)


def config_from_dict(raw: dict | None) -> TrainConfig:
    raw = raw or {}
    problems = []
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        problems.append(f"unknown section(s) {', '.join(unknown)} (known: {', '.join(SECTIONS)})")
    cfg = TrainConfig()
    for name in ("model", "objective", "optim", "train", "sampling"):
        if name in raw:
            setattr(cfg, name, _build_section(type(getattr(cfg, name)), raw[name], name, problems))
    if "draws" in raw:
        draws = raw["draws"] or {}
        known = {f.name for f in fields(DrawConfig)}
        bad = sorted(set(draws) - known)
        if bad:
            problems.append(f"draws: unknown key(s) {', '.join(bad)} (known: {', '.join(sorted(known))})")
        cfg.draws = {k: v for k, v in draws.items() if k in known}
    problems += validate(cfg)
    if problems:
        raise UserError("invalid training config:\n  - " + "\n  - ".join(problems))
    return cfg


def load_config(path) -> TrainConfig:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} not found (see pipelines/configs/ for one per model size)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"config file {path} is not valid YAML: {err}") from err
    try:
        return config_from_dict(raw)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None


def validate(cfg: TrainConfig) -> list[str]:
    p = []
    if cfg.model.name not in SIZES:
        p.append(f"model.name {cfg.model.name!r} is unknown (choose one of {', '.join(SIZES)})")
    o = cfg.objective
    if o.kind not in ("imf", "mf", "fm"):
        p.append(f"objective.kind {o.kind!r} must be imf, mf or fm")
    if o.tangent not in ("aux", "boundary"):
        p.append(f"objective.tangent {o.tangent!r} must be aux or boundary")
    if o.norm_eps <= 0 or o.norm_p < 0:
        p.append(f"objective.norm_p/norm_eps = {o.norm_p}/{o.norm_eps}: need p >= 0 and eps > 0")
    opt = cfg.optim
    if not opt.lr > 0:
        p.append(f"optim.lr = {opt.lr} must be > 0")
    if len(opt.betas) != 2 or not all(0 <= b < 1 for b in opt.betas):
        p.append(f"optim.betas = {opt.betas} must be two numbers in [0, 1)")
    if opt.weight_decay < 0 or opt.warmup_epochs < 0:
        p.append("optim.weight_decay and optim.warmup_epochs must be >= 0")
    if opt.grad_clip is not None and opt.grad_clip <= 0:
        p.append(f"optim.grad_clip = {opt.grad_clip} must be > 0 or null")
    t = cfg.train
    if t.batch_size < 1:
        p.append(f"train.batch_size = {t.batch_size} must be >= 1")
    if t.epochs <= 0 and not t.max_steps:
        p.append("train.epochs must be > 0 (or set train.max_steps)")
    if t.max_steps is not None and t.max_steps < 1:
        p.append(f"train.max_steps = {t.max_steps} must be >= 1 or null")
    if any(not 0 <= d < 1 for d in t.ema_decays) or not t.ema_decays:
        p.append(f"train.ema_decays = {t.ema_decays} must be one or more numbers in [0, 1)")
    for key in ("log_every", "checkpoint_every", "keep_checkpoints"):
        if getattr(t, key) < 1:
            p.append(f"train.{key} must be >= 1")
    s = cfg.sampling
    if any(w < 1 for w in s.omegas):
        p.append(f"sampling.omegas = {s.omegas}: omega must be >= 1")
    if not 0 <= s.t_min <= s.t_max <= 1:
        p.append(f"sampling.t_min/t_max = {s.t_min}/{s.t_max} must satisfy 0 <= t_min <= t_max <= 1")
    try:
        cfg.draw_config()
    except (ValueError, TypeError) as err:
        p.append(f"draws: {err}")
    return p


def check_workers(cfg: TrainConfig, workers: int):
    if workers < 1:
        raise UserError(f"--workers {workers} must be >= 1")
    if cfg.train.batch_size % workers:
        raise UserError(f"train.batch_size {cfg.train.batch_size} is not divisible by --workers {workers}; "
                        f"pick a batch size that is a multiple of {workers}")
