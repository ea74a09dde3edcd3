from pathlib import Path

import pytest
import yaml

from pipelines.config import check_workers, config_from_dict, load_config
from pipelines.errors import UserError

CONFIGS = Path(__file__).resolve().parents[2] / "pipelines" / "configs"


def test_defaults_are_the_papers_recipe():
    cfg = config_from_dict({})
    assert cfg.model.name == "B/2"
    assert (cfg.optim.lr, tuple(cfg.optim.betas), cfg.optim.weight_decay, cfg.optim.warmup_epochs) == (
        1e-4, (0.9, 0.95), 0.0, 10.0)
    assert (cfg.train.batch_size, cfg.train.ema_decays, cfg.optim.grad_clip) == (1024, (0.9999,), None)
    d = cfg.draw_config()
    assert (d.P_mean, d.P_std, d.ratio_r_neq_t, d.omega_max, d.omega_beta, d.class_dropout) == (
        -0.4, 1.0, 0.5, 8.0, 1.0, 0.1)
    assert (d.t_min_range, d.t_max_range) == ((0.0, 0.5), (0.5, 1.0))
    assert (cfg.objective.norm_p, cfg.objective.norm_eps, cfg.objective.tangent) == (1.0, 0.01, "aux")


@pytest.mark.parametrize("name,size,omega,interval", [
    ("imf_b2", "B/2", 8.0, (0.40, 0.65)), ("imf_m2", "M/2", 10.5, (0.40, 0.60)),
    ("imf_l2", "L/2", 10.5, (0.40, 0.60)), ("imf_xl2", "XL/2", 8.0, (0.42, 0.62)),
])
def test_a_config_per_model_size(name, size, omega, interval):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.model.name == size and cfg.train.batch_size == 1024
    assert omega in cfg.sampling.omegas and (cfg.sampling.t_min, cfg.sampling.t_max) == interval


@pytest.mark.parametrize("raw,needle", [
    ({"optim": {"lr": -1e-4}}, "optim.lr = -0.0001 must be > 0"),
    ({"draws": {"omega_max": 0.5}}, "omega_max = 0.5 must be >= 1"),
    ({"draws": {"t_min_range": [-0.2, 0.5]}}, "t_min_range = (-0.2, 0.5)"),
    ({"model": {"name": "Q/7"}}, "model.name = 'Q/7' is unknown"),
    ({"optim": {"learning_rate": 1}}, "optim: unknown key(s) learning_rate"),
    ({"draws": {"omega_maximum": 3}}, "draws: unknown key(s) omega_maximum"),
    ({"trian": {}}, "unknown section(s) trian"),
])
def test_invalid_values_are_refused_with_the_key(raw, needle):
    with pytest.raises(UserError) as err:
        config_from_dict(raw)
    assert needle in str(err.value)


def test_all_problems_are_reported_at_once(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"optim": {"lr": 0}, "draws": {"omega_max": 0.1}}))
    with pytest.raises(UserError) as err:
        load_config(path)
    assert "optim.lr" in str(err.value) and "omega_max" in str(err.value) and str(path) in str(err.value)


def test_batch_must_divide_over_workers():
    cfg = config_from_dict({"train": {"batch_size": 10}})
    check_workers(cfg, 2)
    with pytest.raises(UserError, match="not divisible by --workers 3"):
        check_workers(cfg, 3)


def test_missing_config_file_names_the_path(tmp_path):
    with pytest.raises(UserError, match="nope.yaml not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("assignment, key", [("optim.lr=-3", "optim.lr = -3"),
                                             ("optim.learning_rate=1", "learning_rate"),
                                             ("draws.omega_max=.nan", "draws.omega_max = nan"),
                                             ("train.batch_size=ten", "train.batch_size = 'ten'")])
def test_set_overrides_are_refused_as_the_same_value_in_the_file_is_blaming_the_flag(tmp_path, assignment, key):
    from pipelines.config import apply_overrides, read_yaml

    base = CONFIGS / "demo.yaml"
    with pytest.raises(UserError) as by_flag:
        load_config(base, [assignment])
    section, rest = assignment.split(".", 1)
    name, value = rest.split("=", 1)
    written = tmp_path / "c.yaml"
    raw = read_yaml(base.read_text())
    raw.setdefault(section, {})[name] = read_yaml(value)
    written.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError) as in_file:
        load_config(written)
    strip = lambda err, source: str(err.value).replace(str(source), "SOURCE")  # noqa: E731
    assert key in str(by_flag.value) and strip(by_flag, f"--set {assignment}") == strip(in_file, written)
    assert str(by_flag.value).startswith(f"--set {assignment}: ") and str(base) not in str(by_flag.value)
    assert apply_overrides({"optim": {"lr": 1}}, ["optim.lr=3e-4"]) == {"optim": {"lr": 3e-4}}


def test_yaml_numbers_as_people_write_them_and_a_config_by_name(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-4\ntrain:\n  max_steps: 3e5\n")
    cfg = load_config(path)
    assert cfg.optim.lr == 1e-4 and cfg.train.max_steps == 300000
    assert load_config("demo").model.name == "Tiny/2"
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(UserError, match="is empty"):
        load_config(empty)


@pytest.mark.parametrize("kind,fast,expected,via", [("imf", True, "FastIMFObjective", "set"),
                                                    ("imf", False, "IMFObjective", "file"),
                                                    ("mf", True, "MeanFlowObjective", "set")])
def test_the_tangent_method_reaches_the_objective_and_a_step_runs(tmp_path, kind, fast, expected, via):
    import torch

    from imf_core import draw_step, step_generator
    from pipelines.config import read_yaml
    from pipelines.train.state import TrainState

    settings = dict(kind=kind, fast=fast, jvp="finite_difference", jvp_step=3e-3, jvp_precision="fp32")
    if via == "set":
        cfg = load_config("demo", [f"objective.{k}={str(v).lower()}" for k, v in settings.items()])
    else:
        raw = read_yaml((CONFIGS / "demo.yaml").read_text())
        raw["objective"].update(settings)
        (tmp_path / "fd.yaml").write_text(yaml.safe_dump(raw))
        cfg = load_config(tmp_path / "fd.yaml")
    state = TrainState(cfg, (1, 8, 8), 10, "cpu")
    objective = state.objective
    assert type(objective).__name__ == expected
    assert (objective.jvp, objective.jvp_step, objective.jvp_precision) == ("finite_difference", 3e-3, "fp32")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 1, 8, 8, generator=g), torch.randint(10, (8,), generator=g)
    result = state.step(x, y, draw_step(8, (1, 8, 8), state.draw_cfg, step_generator(0, 0)), lr=1e-3)
    assert result.finite and state.progress.step == 1 and result.metrics["grad_norm"] > 0
    assert load_config("demo").objective.jvp == "forward_ad"  # the default


@pytest.mark.parametrize("assignment,needle", [
    ("objective.jvp=fd", "objective.jvp = 'fd' must be one of 'forward_ad' or 'finite_difference'"),
    ("objective.jvp_step=0.5", "objective.jvp_step = 0.5 must be <= 0.1"),
    ("objective.jvp_precision=bf16", "objective.jvp_precision = 'bf16' must be one of 'auto', 'fp32' or 'autocast'"),
])
def test_bad_tangent_settings_are_refused_by_key(assignment, needle):
    with pytest.raises(UserError) as err:
        load_config("demo", [assignment])
    assert needle in str(err.value)


def test_set_reaches_model_overrides_and_refuses_them_by_their_full_key():
    cfg = load_config("demo", ["model.overrides.depth=6", "model.overrides.aux_head_depth=3"])
    assert cfg.model.overrides["depth"] == 6 and cfg.model.overrides["aux_head_depth"] == 3
    assert cfg.model.overrides["patch_size"] == 4  # the file's other overrides stay
    with pytest.raises(UserError, match="colour cannot be overridden"):
        load_config("demo", ["model.overrides.colour=1"])
    with pytest.raises(UserError, match="write SECTION.KEY=VALUE"):
        load_config("demo", ["model..depth=6"])


RECIPE_OWN_KEYS = {"model.name", "sampling.omegas", "sampling.t_min", "sampling.t_max"}  # per model size


@pytest.mark.parametrize("name", ["imf_b2", "imf_m2", "imf_l2", "imf_xl2"])
def test_the_imagenet_recipes_restate_the_defaults_exactly(name):
    """What a recipe restates of the paper's recipe must be the code's default: a changed default fails here."""
    from pipelines.config import read_yaml

    loaded, defaults = load_config(CONFIGS / f"{name}.yaml").to_dict(), config_from_dict({}).to_dict()
    drift = {}
    for section, values in read_yaml((CONFIGS / f"{name}.yaml").read_text()).items():
        for key in values:
            if f"{section}.{key}" not in RECIPE_OWN_KEYS and loaded[section][key] != defaults[section][key]:
                drift[f"{section}.{key}"] = (loaded[section][key], defaults[section][key])
    assert not drift, f"{name}.yaml states values that differ from the defaults (stated, default): {drift}"


@pytest.mark.parametrize("text,key,lines", [
    ("model:\n  name: Micro/2\ntrain:\n  max_steps: 3\ntrain:\n  seed: 1\n", "'train'", (3, 5)),
    ("optim:\n  lr: 1e-4\n  betas: [0.9, 0.95]\n  lr: 3e-4\n", "'lr'", (2, 4)),
    ("model:\n  name: Tiny/2\n  overrides: {depth: 2,\n              depth: 3}\n", "'depth'", (3, 4)),
])
def test_a_key_given_twice_is_refused_naming_it_and_both_lines(tmp_path, text, key, lines):
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message and f"the key {key} is given twice, on lines {lines[0]} and {lines[1]}" in message
    assert "keep one of them" in message


def test_merge_keys_may_be_overridden_and_are_not_duplicates():
    from pipelines.config import read_yaml

    assert read_yaml("a: &a {x: 1, y: 2}\nb:\n  <<: *a\n  x: 3\n")["b"] == {"x": 3, "y": 2}


def _model_artifact(path):
    from pipelines.models.registry import model_artifact

    return model_artifact(path.parent, "models:/digits@champion")


def _space(path):
    from tune.space import load_space

    return load_space(path)


def _base_of_a_space(path):
    from tune.space import load_space

    space = path.parent / "space.yaml"
    space.write_text(f"base: {path.name}\nspace:\n  draws.omega_max: {{uniform: [2, 8]}}\n")
    return load_space(space)


READERS = {"config": ("c.yaml", load_config), "search space": ("s.yaml", _space),
           "base config of a space": ("base.yaml", _base_of_a_space), "MLmodel": ("MLmodel", _model_artifact)}
BAD_YAML = {
    "key-twice": (b"model:\n  name: Micro/2\nmodel:\n  name: Tiny/2\n", "given twice, on lines 1 and 3"),
    "too-deep": (b"model: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested more than 50 levels deep"),
    "not-utf8": (b"model:\n  name: Micro/2\n# caf\xe9\n", "is not UTF-8 text (byte 0xe9 on line 3): save it as UTF-8"),
    "not-a-mapping": (b"- model\n- train\n", "must be a mapping of"),
    "control-character": (b"model: \x07\n", "U+0007"),
}


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("case", BAD_YAML)
def test_every_yaml_the_product_reads_refuses_what_the_parser_cannot_take(tmp_path, reader, case):
    (content, needle), (name, read) = BAD_YAML[case], READERS[reader]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        read(path)
    message = str(err.value)
    assert needle in message and str(path) in message, message
    assert len(message) < 400 and "\n" not in message, message


def test_each_problem_blames_the_set_or_the_file_that_gave_it(tmp_path):
    from pipelines.config import Assignment

    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: Micro/2\ntrain:\n  seed: -1\n")
    with pytest.raises(UserError) as err:
        load_config(path, ["optim.lr=abc", "train.batchsize=8", Assignment("model.name=Z/9", "--model Z/9")])
    lines = str(err.value).splitlines()
    assert lines[0] == "invalid training config:"
    assert f"  - {path}: train.seed = -1 must be >= 0" in lines
    assert "  - --set optim.lr=abc: optim.lr = 'abc' must be a number" in lines
    assert any(line.startswith("  - --set train.batchsize=8: train: unknown key(s) batchsize") for line in lines)
    assert any(line.startswith("  - --model Z/9: model.name = 'Z/9' is unknown") for line in lines)
    with pytest.raises(UserError, match=r"^--set optim.betas=\[0.9,: the value is not valid YAML \(line 1"):
        load_config(path, ["optim.betas=[0.9,"])
    with pytest.raises(UserError, match=r"^--set model.overrides=\{depth: 1, depth: 2\}: .*'depth' is given twice"):
        load_config("demo", ["model.overrides={depth: 1, depth: 2}"])
