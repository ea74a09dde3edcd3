"""Search spaces: a YAML file naming a base training config and the settings to sweep.

    description: what the sweep asks
    base: imf_b2.yaml          # a train config: a path relative to this file, or a name in pipelines/configs/
    overrides:                 # optional, merged into the base section by section
      train: {batch_size: 256}
    space:                     # dotted config paths (TrainConfig sections; draws.* are DrawConfig fields)
      draws.omega_max: {uniform: [4, 12]}
      draws.t_min_range: {choice: [[0.0, 0.5], [0.2, 0.4]]}
      objective.tangent: {grid: [aux, boundary]}

Kinds: uniform / loguniform [low, high], randint [low, high] (both ends included), choice [values]
(sampled), grid [values] (every value, for each sample). A space is checked completely before any
trial starts: unknown keys or kinds, empty or reversed ranges, and values the training config refuses.
"""

import copy
import json
import random
from dataclasses import dataclass
from pathlib import Path

from pipelines.config import CONFIGS, SECTIONS, apply_overrides, check_workers, config_from_dict, config_path
from pipelines.errors import UserError
from pipelines.yaml_files import read_yaml_file

SPACES = Path(__file__).resolve().parent / "spaces"
TOP_KEYS = ("description", "base", "overrides", "space")
RANGE_KINDS = ("uniform", "loguniform", "randint")
LIST_KINDS = ("choice", "grid")
# Set by `imf tune` itself from --max-steps / --evals / --eval-samples: sweeping them would fight ASHA.
SWEEP_OWNED = ("train.max_steps", "train.eval_every", "train.eval_samples", "train.checkpoint_every",
               "train.keep_checkpoints")
JOINT_CHECKS = 16  # random joint draws validated before the sweep starts


@dataclass
class Space:
    path: Path
    name: str
    description: str
    base: dict  # the raw training config (base file + overrides), before the sweep's own settings
    entries: dict  # dotted key -> {kind: argument}
    assignments: tuple = ()  # the --set overrides applied to `base`: a refusal of their values blames them

    def grid_size(self) -> int:
        size = 1
        for spec in self.entries.values():
            kind, arg = _kind(spec)
            if kind == "grid":
                size *= len(arg)
        return size

    def domains(self) -> dict:
        """The entries as Ray Tune search domains, keyed by dotted path."""
        from ray import tune

        out = {}
        for key, spec in self.entries.items():
            kind, arg = _kind(spec)
            if kind == "uniform":
                out[key] = tune.uniform(*arg)
            elif kind == "loguniform":
                out[key] = tune.loguniform(*arg)
            elif kind == "randint":
                out[key] = tune.randint(arg[0], arg[1] + 1)
            elif kind == "choice":
                out[key] = tune.choice(arg)
            else:
                out[key] = tune.grid_search(arg)
        return out

    def sample(self, rng: random.Random) -> dict:
        """One random point (grid entries drawn at random too), for checking configs before the sweep."""
        point = {}
        for key, spec in self.entries.items():
            kind, arg = _kind(spec)
            if kind in ("uniform", "loguniform"):
                point[key] = rng.uniform(*arg) if kind == "uniform" else arg[0] * (arg[1] / arg[0]) ** rng.random()
            elif kind == "randint":
                point[key] = rng.randint(*arg)
            else:
                point[key] = rng.choice(arg)
        return point


def apply(base: dict, point: dict) -> dict:
    """A copy of the raw config with each dotted key of `point` set."""
    raw = copy.deepcopy(base)
    for key, value in point.items():
        section, name = key.split(".", 1)
        if raw.get(section) is None:
            raw[section] = {}
        raw[section][name] = value
    return raw


def merge(base: dict, overrides: dict) -> dict:
    raw = copy.deepcopy(base)
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(raw.get(section), dict):
            raw[section] = {**raw[section], **values}
        else:
            raw[section] = copy.deepcopy(values)
    return raw


def resolve_space_path(name) -> Path:
    """A file path, or the name of a shipped space (`guidance` for tune/spaces/guidance.yaml)."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = SPACES / f"{path.stem}.yaml"
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in SPACES.glob("*.yaml")))
    found = "is a folder" if path.is_dir() else "not found"
    raise UserError(f"search space {name} {found} (give a YAML file's path, or one of the shipped spaces: {names})")


def _read_config(path: Path, what: str) -> dict:
    return read_yaml_file(path, what, mapping_of=f"sections ({', '.join(SECTIONS)})") or {}


def _base_config(value, space_path: Path) -> dict:
    if value is None:
        return {}
    for candidate in (space_path.parent / str(value), Path(str(value)), CONFIGS / str(value)):
        if candidate.is_file():
            return _read_config(candidate, "base config")
    raise UserError(f"{space_path}: base config {value!r} not found (a path relative to the space file, "
                    f"or one of {', '.join(sorted(p.name for p in CONFIGS.glob('*.yaml')))})")


def load_space(name, config=None, overrides=()) -> Space:
    """Read a space file; `config` (a train config path) replaces its `base`, `overrides` (--set) apply on top.
    Checks the file's shape only: call `check` once the sweep's own settings are known."""
    path = resolve_space_path(name)
    raw = read_yaml_file(path, "search space", mapping_of=f"keys {', '.join(TOP_KEYS)}")
    if raw is None:
        raise UserError(f"search space {path} is empty: it needs a `space:` mapping of dotted config keys to ranges "
                        "(start from tune/spaces/tiny.yaml)")
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise UserError(f"search space {path}: unknown top-level key(s) {', '.join(unknown)} "
                        f"(known: {', '.join(TOP_KEYS)})")
    entries = raw.get("space")
    if not isinstance(entries, dict) or not entries:
        raise UserError(f"search space {path}: `space:` must map dotted config keys to ranges, "
                        "e.g. `draws.omega_max: {uniform: [2, 10]}`")
    raw_overrides = raw.get("overrides") or {}
    if not isinstance(raw_overrides, dict):
        raise UserError(f"search space {path}: `overrides:` must be a mapping of config sections")
    if config:
        base = _read_config(config_path(config), "config file")
    else:
        base = _base_config(raw.get("base"), path)
    base = apply_overrides(merge(base, raw_overrides), overrides)
    return Space(path=path, name=path.stem, description=str(raw.get("description") or ""), base=base, entries=entries,
                 assignments=tuple(overrides or ()))


def _kind(spec):
    return next(iter(spec.items()))


def _known_keys() -> dict:
    return {section: list(model.model_fields) for section, model in SECTIONS.items()}


def entry_problems(key: str, spec) -> list[str]:
    """What is wrong with one `space:` entry on its own (empty when nothing)."""
    known = _known_keys()
    section, _, name = key.partition(".")
    if section not in known or name not in known[section]:
        hint = (f"known keys of {section}: {', '.join(known[section])}" if section in known
                else f"sections: {', '.join(known)}")
        return [f"{key}: unknown config key ({hint})"]
    if key in SWEEP_OWNED:
        return [f"{key}: set by `imf tune` (--max-steps, --evals, --eval-samples); remove it from the space"]
    kinds = RANGE_KINDS + LIST_KINDS
    if not isinstance(spec, dict) or len(spec) != 1 or _kind(spec)[0] not in kinds:
        return [f"{key}: {json.dumps(spec)} must be one mapping such as {{uniform: [low, high]}} "
                f"(kinds: {', '.join(kinds)})"]
    kind, arg = _kind(spec)
    if kind in LIST_KINDS:
        if not isinstance(arg, list) or not arg:
            return [f"{key}: {kind} needs a non-empty list of values, got {json.dumps(arg)}"]
        return []
    numeric = isinstance(arg, list) and len(arg) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in arg)
    if not numeric:
        return [f"{key}: {kind} needs [low, high] (two numbers), got {json.dumps(arg)}"]
    lo, hi = arg
    if lo > hi:
        return [f"{key}: {kind} [{lo}, {hi}] has lower > upper; swap the ends"]
    if lo == hi:
        return [f"{key}: {kind} [{lo}, {hi}] is an empty range; widen it or set the value under `overrides:`"]
    if kind == "loguniform" and lo <= 0:
        return [f"{key}: loguniform [{lo}, {hi}] needs low > 0"]
    if kind == "randint" and not all(isinstance(v, int) for v in arg):
        return [f"{key}: randint [{lo}, {hi}] needs whole numbers"]
    return []


def _extremes(spec) -> list:
    kind, arg = _kind(spec)
    return list(arg) if kind in RANGE_KINDS + LIST_KINDS else []


def _config_problem(raw: dict, workers: int | None):
    try:
        cfg = config_from_dict(raw)
        if workers:
            check_workers(cfg, workers)
    except UserError as err:
        return str(err).replace("invalid training config:\n  - ", "").replace("\n  - ", "; ")
    return None


def check(space: Space, workers: int | None = None, seed: int = 0):
    """Refuse the space, naming every bad key, unless each end of every range, every listed value and
    a few joint draws make a valid training config (divisible by `workers` when given)."""
    where = f"invalid search space {space.path}"
    config_from_dict(space.base, space.assignments, where=f"search space {space.path} (its base config)")
    base_problem = _config_problem(space.base, workers)
    if base_problem:
        raise UserError(f"{where}: its base config is invalid: {base_problem}")
    problems = [p for key, spec in space.entries.items() for p in entry_problems(key, spec)]
    if not problems:
        for key, spec in space.entries.items():
            for value in _extremes(spec):
                problem = _config_problem(apply(space.base, {key: value}), workers)
                if problem:
                    problems.append(f"{key} = {json.dumps(value)} gives an invalid config: {problem}")
    if not problems:
        rng = random.Random(seed)
        for _ in range(JOINT_CHECKS):
            point = space.sample(rng)
            problem = _config_problem(apply(space.base, point), workers)
            if problem:
                problems.append(f"the combination {json.dumps(point)} gives an invalid config: {problem}")
                break
    if problems:
        raise UserError(f"{where}:\n  - " + "\n  - ".join(problems))
