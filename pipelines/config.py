"""Training configuration: one YAML file (plus `--set key=value` overrides), validated before any worker starts.

Defaults are the paper's ImageNet-256 recipe (docs/method.md; the paper, arXiv 2512.02012). The config is a
pydantic model: every key must be known, every value of the right type, finite and in range, and every problem is
reported at once, naming the key, the value given and what is allowed, and blaming the `--set` that gave the value
when one did. YAML is read strictly (yaml_files.py): YAML 1.2's numbers, no key twice.
"""

import math
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from imf_core import SIZES
from imf_core.draws import DrawConfig
from imf_core.finite_difference import DEFAULT_STEP

from .errors import UserError
from .yaml_files import read_yaml, read_yaml_file, yaml_problem

# IMFDiT arguments a config may override; input size, channels and classes come from the data, the
# v-branch from the objective.
MODEL_OVERRIDES = {"patch_size": int, "hidden_size": int, "depth": int, "num_heads": int, "aux_head_depth": int,
                   "mlp_ratio": float, "num_class_tokens": int, "num_cfg_tokens": int, "num_interval_tokens": int,
                   "num_time_tokens": int, "weight_init_constant": float}
STRICT = ConfigDict(extra="forbid", allow_inf_nan=False, validate_default=True)


class ModelSection(BaseModel):
    model_config = STRICT
    name: str = "B/2"
    overrides: dict[str, Any] = Field(default_factory=dict)  # e.g. {aux_head_depth: 4}

    @field_validator("name")
    @classmethod
    def _known_size(cls, name):
        if name not in SIZES:
            raise ValueError(f"is unknown (choose one of {', '.join(SIZES)})")
        return name

    @field_validator("overrides")
    @classmethod
    def _overrides(cls, overrides):
        problems = []
        for key, value in overrides.items():
            kind = MODEL_OVERRIDES.get(key)
            if kind is None:
                problems.append(f"{key} cannot be overridden (these can: {', '.join(MODEL_OVERRIDES)})")
            elif (isinstance(value, bool) or not isinstance(value, (int, float))
                  or (kind is int and value != int(value))):
                problems.append(f"{key} = {value!r} must be a {'whole ' if kind is int else ''}number")
            elif not (math.isfinite(value) and value > 0):
                problems.append(f"{key} = {value!r} must be a finite number > 0")
        if problems:
            raise ValueError("; ".join(problems))
        return {k: MODEL_OVERRIDES[k](v) for k, v in overrides.items()}

    @model_validator(mode="after")
    def _buildable(self):
        """The network these settings make must exist."""
        from imf_core.model import check_model

        try:
            check_model(self.name, **self.overrides)
        except (ValueError, TypeError) as err:
            raise ValueError(f"model {self.name} with overrides {self.overrides} cannot be built: {err}") from None
        return self


class ObjectiveSection(BaseModel):
    model_config = STRICT
    kind: Literal["imf", "mf", "fm"] = "imf"
    tangent: Literal["aux", "boundary"] = "aux"
    norm_p: float = Field(1.0, ge=0)
    norm_eps: float = Field(0.01, gt=0)
    fast: bool = True  # the optimised step (imf_core.FastIMFObjective; same loss and gradients)
    # How du/dt is taken (imf and mf): forward-mode AD, or a central finite difference of two forward passes
    # without gradient, which runs through fused attention kernels, FSDP and compiled graphs.
    jvp: Literal["forward_ad", "finite_difference"] = "forward_ad"
    jvp_step: float = Field(DEFAULT_STEP, gt=0, le=0.1)  # the finite difference's step (1e-2: the most accurate)
    # The du/dt pass's precision under bf16: auto = fp32 for a finite difference, the step's autocast for forward AD.
    jvp_precision: Literal["auto", "fp32", "autocast"] = "auto"
    mf_omega: float = Field(1.0, ge=0)  # original MeanFlow only
    mf_kappa: float = Field(0.5, ge=0)
    fm_guided: bool = False  # flow matching only


_DrawFields = create_model(  # imf_core.DrawConfig's fields, types and defaults, as a strict pydantic model
    "_DrawFields", __config__=STRICT, **{f.name: (f.type, f.default) for f in dataclass_fields(DrawConfig)})


class DrawsSection(_DrawFields):
    @model_validator(mode="after")
    def _problems(self):
        problems = DrawConfig.problems(self)  # the rules live in imf_core's dataclass; they run on the validated values
        if problems:
            raise ValueError("; ".join(problems))
        return self


class OptimSection(BaseModel):
    model_config = STRICT
    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = Field(0.0, ge=0)
    warmup_epochs: float = Field(10.0, ge=0)
    grad_clip: float | None = Field(None, gt=0)

    @field_validator("betas")
    @classmethod
    def _betas(cls, betas):
        if not all(0 <= b < 1 for b in betas):
            raise ValueError("must be two numbers in [0, 1)")
        return betas


class TrainSection(BaseModel):
    model_config = STRICT
    batch_size: int = Field(1024, ge=1)  # global, over all workers
    epochs: float = Field(640.0, gt=0)
    max_steps: int | None = Field(None, ge=1)  # stop earlier than `epochs`
    seed: int = Field(0, ge=0)
    ema_decays: tuple[float, ...] = Field((0.9999,), min_length=1)
    ema_warmup: bool = False  # cap the decay at (1 + step) / (10 + step): for short runs
    bf16: bool = True  # autocast on GPU; CPU runs stay fp32
    flip: bool = False
    log_every: int = Field(100, ge=1)
    checkpoint_every: int = Field(5000, ge=1)
    keep_checkpoints: int = Field(3, ge=1)
    sample_every: int = Field(0, ge=0)  # 0: only at the end
    shuffle_buffer: int = Field(10000, ge=0)  # streamed data: rows in Ray Data's local shuffle buffer
    data_in_memory_gb: float = Field(4.0, ge=0)  # a worker's share of the latents up to this size is read once
    eval_every: int = Field(0, ge=0)  # steps between quick_fd evaluations (0: only at the end)
    eval_samples: int = Field(0, ge=0)  # 1-NFE samples per quick_fd evaluation; 0: off

    @field_validator("ema_decays")
    @classmethod
    def _decays(cls, decays):
        if not all(0 <= d < 1 for d in decays):
            raise ValueError("must be one or more numbers in [0, 1)")
        return decays

    @field_validator("eval_samples")
    @classmethod
    def _samples(cls, n):
        if n == 1:
            raise ValueError("must be 0 (off) or >= 2 (a Fréchet distance needs two images)")
        return n


class SamplingSection(BaseModel):
    model_config = STRICT
    omegas: tuple[float, ...] = Field((1.0, 4.0, 8.0), min_length=1)
    t_min: float = Field(0.4, ge=0, le=1)
    t_max: float = Field(0.65, ge=0, le=1)
    per_class: int = Field(4, ge=1)
    max_classes: int = Field(10, ge=1)
    seed: int = Field(0, ge=0)

    @field_validator("omegas")
    @classmethod
    def _omegas(cls, omegas):
        if not all(w >= 1 for w in omegas):
            raise ValueError("omega must be >= 1 (1 is no guidance)")
        return omegas

    @model_validator(mode="after")
    def _interval(self):
        if self.t_min > self.t_max:
            raise ValueError(f"t_min = {self.t_min} > t_max = {self.t_max}: the CFG interval needs t_min <= t_max")
        return self


class TrainConfig(BaseModel):
    model_config = STRICT
    model: ModelSection = Field(default_factory=ModelSection)
    objective: ObjectiveSection = Field(default_factory=ObjectiveSection)
    draws: DrawsSection = Field(default_factory=DrawsSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    train: TrainSection = Field(default_factory=TrainSection)
    sampling: SamplingSection = Field(default_factory=SamplingSection)

    def draw_config(self) -> DrawConfig:
        return DrawConfig(**self.draws.model_dump())

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def flat(self) -> dict:
        """{"optim.lr": 1e-4, ...}: what MLflow logs as params."""
        return {f"{section}.{key}": value for section, values in self.to_dict().items()
                for key, value in values.items()}


SECTIONS = {name: field.annotation for name, field in TrainConfig.model_fields.items()}


PHRASES = {  # pydantic's error types, said the way the rest of the errors here say things
    "greater_than": "must be > {gt}", "greater_than_equal": "must be >= {ge}", "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}", "finite_number": "must be a finite number (not NaN or infinity)",
    "float_parsing": "must be a number", "float_type": "must be a number", "int_parsing": "must be a whole number",
    "int_type": "must be a whole number", "int_from_float": "must be a whole number", "bool_parsing":
    "must be true or false", "bool_type": "must be true or false", "string_type": "must be a string",
    "tuple_type": "must be a list", "list_type": "must be a list", "too_short": "must hold at least {min_length} "
    "value(s)", "too_long": "must hold at most {max_length} value(s)", "literal_error": "must be one of {expected}",
    "dict_type": "must be a mapping", "model_type": "must be a mapping of keys to values",
}


def _describe(error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"])
    kind, given = error["type"], error.get("input")
    if kind == "value_error":  # our own validators say it whole
        message = str(error["ctx"]["error"]) if "ctx" in error else error["msg"]
        whole = isinstance(given, dict) or "=" in message.split(":")[0]
        return f"{key}: {message}" if whole else f"{key} = {given!r} {message}"
    phrase = PHRASES.get(kind, error["msg"]).format(**error.get("ctx", {}))
    return f"{key} = {given!r} {phrase}"


def problems_of(error: ValidationError, source=lambda loc: None) -> list[tuple[str | None, str]]:
    """(source, line) per problem, `source(loc)` naming what gave the value at `loc` (None: the file or dict);
    unknown keys grouped per section and source, with the known ones listed."""
    problems, unknown = [], {}
    errors = error.errors()
    locs = [tuple(e["loc"]) for e in errors]
    for e, loc in zip(errors, locs):
        if any(len(other) > len(loc) and other[:len(loc)] == loc for other in locs):
            continue  # a container's error that only repeats the one of its item
        if e["type"] == "extra_forbidden":
            unknown.setdefault((loc[:-1], source(loc)), []).append(str(loc[-1]))
        else:
            problems.append((source(loc), _describe(e)))
    return problems + [(given_by, _unknown_keys(section, keys)) for (section, given_by), keys in unknown.items()]


def _unknown_keys(section: tuple, keys: list) -> str:
    if not section:
        return f"unknown section(s) {', '.join(keys)} (known: {', '.join(SECTIONS)})"
    known = SECTIONS[section[0]].model_fields if section[0] in SECTIONS else {}
    return f"{'.'.join(section)}: unknown key(s) {', '.join(keys)} (known: {', '.join(known)})"


def _refusal(problems: list[tuple[str | None, str]]) -> str:
    """The message for every problem: under its source when all share one, else each line prefixed by its own."""
    sources = {given_by for given_by, _ in problems}
    if len(sources) == 1:
        head = f"{next(iter(sources))}: " if None not in sources else ""
        return f"{head}invalid training config:\n  - " + "\n  - ".join(line for _, line in problems)
    return "invalid training config:\n  - " + "\n  - ".join(
        f"{given_by}: {line}" if given_by else line for given_by, line in problems)


def config_from_dict(raw: dict | None, assignments=(), where: str | None = None) -> TrainConfig:
    """The validated config of `raw`, into which `assignments` (--set) were applied: a problem with a value they
    gave blames their flag, any other `where` (the file)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{where + ': ' if where else ''}invalid training config: it must be a mapping of sections "
                        f"({', '.join(SECTIONS)}), got {type(raw).__name__} {str(raw)[:60]!r}")
    raw = {k: ({} if v is None else v) for k, v in raw.items()}  # `train:` with nothing under it
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as err:
        raise UserError(_refusal(problems_of(err, _blamer(assignments, where)))) from None


class Assignment(str):
    """A `SECTION.KEY=VALUE` override and the flag a refusal blames for it: `--set ...`, unless another flag stands
    for it (`imf train --model Z/9` for model.name=Z/9)."""

    def __new__(cls, text: str, flag: str | None = None):
        assignment = super().__new__(cls, text)
        assignment.flag = flag or f"--set {text}"
        return assignment


def flag_of(assignment: str) -> str:
    return getattr(assignment, "flag", f"--set {assignment}")


def _key_path(assignment: str) -> tuple:
    key, sep, _ = assignment.partition("=")
    path = tuple(part.strip() for part in key.split("."))
    if not sep or len(path) < 2 or not all(path):
        raise UserError(f"{flag_of(assignment)}: write SECTION.KEY=VALUE, e.g. --set optim.lr=3e-4 or "
                        f"--set model.overrides.depth=6 (sections: {', '.join(SECTIONS)})")
    return path


def _blamer(assignments, where: str | None):
    """loc -> the flag of the last assignment whose key holds `loc` or lies inside it, else `where`."""
    keys = [(_key_path(a), flag_of(a)) for a in assignments or ()]

    def source(loc: tuple):
        for path, flag in reversed(keys):
            if loc and (loc[:len(path)] == path or path[:len(loc)] == loc):
                return flag
        return where

    return source


def apply_overrides(raw: dict, assignments) -> dict:
    """`section.key=value` assignments (values read as YAML, like the file) applied to a raw config dict; a
    longer path reaches into a mapping, e.g. `model.overrides.patch_size=4`."""
    raw = dict(raw or {})
    for text in assignments or ():
        path, value = _key_path(text), text.partition("=")[2]
        try:
            parsed = read_yaml(value) if value.strip() else None
        except yaml.YAMLError as err:
            raise UserError(f"{flag_of(text)}: the value is not valid YAML ({yaml_problem(err)})") from None
        raw[path[0]] = _assigned(raw.get(path[0]), list(path[1:]), parsed)
    return raw


def _assigned(mapping, path: list, value) -> dict:
    """A copy of `mapping` (a fresh one if it is not a mapping) with `value` at `path`."""
    out = dict(mapping) if isinstance(mapping, dict) else {}
    out[path[0]] = value if len(path) == 1 else _assigned(out.get(path[0]), path[1:], value)
    return out


CONFIGS = Path(__file__).resolve().parent / "configs"


def config_path(name) -> Path:
    """A YAML path, or the name of a shipped config (`demo`, `imf_b2`, ... in pipelines/configs/)."""
    path = Path(name)
    shipped = CONFIGS / f"{path.stem}.yaml"
    if path.is_file():
        return path
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in CONFIGS.glob("*.yaml")))
    found = "is a folder" if path.is_dir() else "not found"
    raise UserError(f"config file {path} {found}: give a YAML file's path or a shipped config ({names})")


def load_config(path, overrides=()) -> TrainConfig:
    """The YAML file at `path` (or a shipped config's name) with `--set` overrides applied, validated; a
    UserError naming every problem and, for each, the file or the --set that gave the value."""
    path = config_path(path)
    raw = read_yaml_file(path, "config file", mapping_of=f"sections ({', '.join(SECTIONS)})")
    if raw is None:
        raise UserError(f"config file {path} is empty: a training config names at least its model "
                        "(start from pipelines/configs/demo.yaml or imf_b2.yaml)")
    return config_from_dict(apply_overrides(raw, overrides), overrides, where=str(path))


def patch_size(cfg: TrainConfig) -> int:
    """The side of the patches the config's network cuts its input into: it must divide the latent side."""
    return int(cfg.model.overrides.get("patch_size", SIZES[cfg.model.name]["patch_size"]))


def check_workers(cfg: TrainConfig, workers: int):
    if workers < 1:
        raise UserError(f"--workers {workers} must be >= 1")
    if cfg.train.batch_size % workers:
        raise UserError(f"train.batch_size {cfg.train.batch_size} is not divisible by --workers {workers}; "
                        f"pick a batch size that is a multiple of {workers}")
