"""Search spaces: the shipped ones are valid, bad ones are refused naming the key, before anything starts."""

import random
from pathlib import Path

import pytest
import yaml

from pipelines import cli
from pipelines.config import config_from_dict
from pipelines.errors import UserError
from tune.space import SPACES, apply, check, load_space

TINY_BASE = {"model": {"name": "Micro/2"}, "train": {"batch_size": 16}}


def write_space(tmp_path, space, **top) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"overrides": TINY_BASE, "space": space, **top}))
    return path


@pytest.mark.parametrize("name, keys", [
    ("guidance", {"draws.omega_max", "draws.omega_beta", "draws.t_min_range", "draws.t_max_range",
                  "draws.class_dropout"}),
    ("time_sampler", {"draws.time_sampler", "draws.P_mean", "draws.P_std", "draws.r_P_mean", "draws.r_P_std",
                      "draws.ratio_r_neq_t"}),
    ("tangent", {"objective.tangent"}),
    ("tiny", {"optim.lr", "draws.omega_max", "draws.time_sampler"}),
])
def test_shipped_spaces_are_valid_and_sweep_what_they_say(name, keys):
    space = load_space(name)
    assert space.path == SPACES / f"{name}.yaml"
    assert keys <= set(space.entries)
    check(space, workers=2)
    rng = random.Random(1)
    for _ in range(20):
        cfg = config_from_dict(apply(space.base, space.sample(rng)))
        cfg.draw_config()


@pytest.mark.parametrize("entry, message", [
    ({"draws.omega_maximum": {"uniform": [2, 8]}}, "draws.omega_maximum: unknown config key (known keys of draws: "),
    ({"drawz.omega_max": {"uniform": [2, 8]}}, "drawz.omega_max: unknown config key (sections: model, "),
    ({"draws.omega_max": {"uniform": [4, 4]}}, "draws.omega_max: uniform [4, 4] is an empty range"),
    ({"draws.P_std": {"uniform": [1.5, 0.5]}}, "draws.P_std: uniform [1.5, 0.5] has lower > upper"),
    ({"objective.tangent": {"choice": []}}, "objective.tangent: choice needs a non-empty list"),
    ({"draws.P_mean": {"normal": [0, 1]}}, "draws.P_mean: {\"normal\": [0, 1]} must be one mapping"),
    ({"draws.P_mean": 0.3}, "draws.P_mean: 0.3 must be one mapping"),
    ({"optim.lr": {"loguniform": [0, 1e-3]}}, "optim.lr: loguniform [0, 0.001] needs low > 0"),
    ({"train.max_steps": {"choice": [10, 20]}}, "train.max_steps: set by `imf tune`"),
    ({"draws.omega_max": {"uniform": [0.5, 4]}}, "draws.omega_max = 0.5 gives an invalid config: draws: "
                                                 "omega_max = 0.5 must be >= 1"),
    ({"objective.tangent": {"choice": ["aux", "sideways"]}}, 'objective.tangent = "sideways" gives an invalid'),
    ({"draws.t_min_range": {"choice": [[0.0, 0.5], [0.6, 0.4]]}}, "draws.t_min_range = [0.6, 0.4] gives an invalid"),
    ({"train.batch_size": {"choice": [16, 15]}}, "train.batch_size = 15 gives an invalid config: train.batch_size 15 "
                                                 "is not divisible by --workers 2"),
])
def test_a_bad_entry_is_refused_naming_the_key(tmp_path, entry, message):
    space = load_space(write_space(tmp_path, {"draws.omega_max": {"uniform": [2, 8]}, **entry}))
    with pytest.raises(UserError) as err:
        check(space, workers=2)
    assert f"invalid search space {space.path}" in str(err.value)
    assert message in str(err.value)


def test_every_bad_key_is_reported_at_once(tmp_path):
    space = load_space(write_space(tmp_path, {"draws.omega_max": {"uniform": [9, 2]}, "draws.bogus": {"choice": [1]},
                                              "draws.P_std": {"uniform": [1.0, 2.0]}}))
    with pytest.raises(UserError) as err:
        check(space)
    lines = str(err.value).splitlines()
    assert len(lines) == 3
    assert {line.split(":")[0] for line in lines[1:]} == {"  - draws.omega_max", "  - draws.bogus"}


@pytest.mark.parametrize("top, message", [
    ({"spaces": {}}, "unknown top-level key(s) spaces"),
    ({"space": {}}, "`space:` must map dotted config keys to ranges"),
    ({"base": "nowhere.yaml"}, "base config 'nowhere.yaml' not found"),
])
def test_a_malformed_file_is_refused(tmp_path, top, message):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"space": {"draws.omega_max": {"uniform": [2, 8]}}, **top}))
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_space(path)


def test_ranges_become_tune_domains_within_their_bounds(tmp_path):
    space = load_space(write_space(tmp_path, {
        "draws.omega_max": {"uniform": [2, 8]}, "optim.lr": {"loguniform": [1e-4, 1e-2]},
        "train.seed": {"randint": [3, 4]}, "draws.t_min_range": {"choice": [[0.0, 0.5], [0.2, 0.4]]},
        "objective.tangent": {"grid": ["aux", "boundary"]}}))
    domains = space.domains()
    assert space.grid_size() == 2 and domains["objective.tangent"] == {"grid_search": ["aux", "boundary"]}
    seen = {"draws.omega_max": set(), "optim.lr": set(), "train.seed": set(), "draws.t_min_range": set()}
    for _ in range(200):
        for key in seen:
            value = domains[key].sample()
            seen[key].add(tuple(value) if isinstance(value, list) else value)
    assert all(2 <= v <= 8 for v in seen["draws.omega_max"]) and len(seen["draws.omega_max"]) > 100
    assert all(1e-4 <= v <= 1e-2 for v in seen["optim.lr"]) and min(seen["optim.lr"]) < 1e-3
    assert seen["train.seed"] == {3, 4}  # randint includes both ends
    assert seen["draws.t_min_range"] == {(0.0, 0.5), (0.2, 0.4)}
    cfg = config_from_dict(apply(space.base, {"draws.t_min_range": [0.2, 0.4], "objective.tangent": "boundary"}))
    assert cfg.draw_config().t_min_range == (0.2, 0.4) and cfg.objective.tangent == "boundary"
    assert cfg.model.name == "Micro/2"  # the overrides stay under the swept values


def test_the_cli_refuses_before_touching_storage_or_tracking(tmp_path, capsys):
    bad = write_space(tmp_path, {"draws.omega_max": {"uniform": [8, 2]}})
    common = ["--data", str(tmp_path / "latents"), "--max-steps", "8", "--storage", str(tmp_path / "runs"),
              "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    assert cli.main(["tune", "--space", str(bad), "--trials", "4", *common]) == 2
    err = capsys.readouterr().err
    assert "imf tune: error: invalid search space" in err and "draws.omega_max: uniform [8, 2] has lower > upper" in err
    assert cli.main(["tune", "--space", "tiny", "--trials", "3", *common]) == 2
    err = capsys.readouterr().err
    assert "--trials 3:" in err and "give a multiple of 2" in err
    assert cli.main(["tune", "--space", "no_such_space", "--trials", "4", *common]) == 2
    assert "one of the shipped spaces: guidance, tangent, time_sampler, tiny" in capsys.readouterr().err
    assert cli.main(["tune", "--space", "tiny", "--trials", "4", *common]) == 2
    assert f"data folder {tmp_path / 'latents'} not found" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
