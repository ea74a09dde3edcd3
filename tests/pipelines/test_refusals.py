"""Bad input never gives a traceback (issue 13): generated invalid training configs and command lines of every
step, each refused with a non-zero status and a short message naming the problem, before Ray starts, with
nothing written where the command was run or to its output folder. Most run in-process (`cli.main`), a few
as a real `imf` process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines import cli
from tests.pipelines.latent_sets import write_latent_set
from tests.pipelines.model_helpers import fake_checkpoint, model_folder
from tests.pipelines.refusal_cases import command_cases, config_cases
from tests.pipelines.train_helpers import digits_tree, write_config

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 8  # a message of a few lines (argparse adds its usage lines above its one-line message)


class RayStarted(Exception):
    pass


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Input files of every kind the cases need, outside the folder the commands run in."""
    root = tmp_path_factory.mktemp("inputs")
    manifest = {"dataset": "digits", "codec": {"codec": "pixels"}, "latent_shape": [1, 8, 8], "flip": False,
                "class_names": ["0", "1", "2", "3"], "num_classes": 4, "shards": [], "counts": {"encoded": 64}}
    folders = {name: root / name for name in ("empty", "latents", "no_counts", "bad_json")}
    for folder in folders.values():
        folder.mkdir()
    write_latent_set(folders["latents"], latent_shape=(1, 8, 8), classes=4, shards=2, rows=32)
    (folders["no_counts"] / "manifest.json").write_text(
        json.dumps({k: v for k, v in manifest.items() if k != "counts"}))
    (folders["bad_json"] / "manifest.json").write_text("{")
    (root / "notes.txt").write_text("not an image folder, not a checkpoint\n")
    samples = root / "samples"
    samples.mkdir()
    np.savez(samples / "s.npz", arr_0=np.zeros((8, 8, 8, 3), np.uint8), labels=np.arange(8) % 4)
    (root / "space.yaml").write_text("base: demo.yaml\nspace:\n  nonsense.key: {uniform: [0, 1]}\n")
    return {**{k: str(v) for k, v in folders.items()}, "file": str(root / "notes.txt"), "missing": str(root / "nope"),
            "images": str(digits_tree(root / "images", classes=2, per_class=2)), "samples": str(samples),
            "config": str(write_config(root / "c.yaml")), "model": str(model_folder(root)),
            "checkpoint": str(fake_checkpoint(root / "ckpt")), "bad_space": str(root / "space.yaml"),
            "store": f"sqlite:///{root}/store/mlflow.db"}


@pytest.fixture
def no_ray(monkeypatch):
    """Any attempt to start or join Ray raises RayStarted (which no step catches)."""
    import ray

    def refuse(*args, **kwargs):
        raise RayStarted("Ray was started")

    monkeypatch.setattr("pipelines.runtime.start_ray", refuse)
    monkeypatch.setattr(ray, "init", refuse)


def refusal_problem(argv, work: Path, capsys, needle) -> str | None:
    """None when `imf ARGV` is refused cleanly; else what is wrong with the way it failed."""
    before = set(work.iterdir())
    try:
        code = cli.main(argv)
    except SystemExit as exit:  # argparse
        code = exit.code
    except RayStarted:
        return "Ray started before the input was refused"
    except Exception as err:  # noqa: BLE001 - a traceback is exactly what this test looks for
        return f"traceback: {err.__class__.__name__}: {err}"
    finally:
        new = set(work.iterdir()) - before
        written = sorted(p.name for p in new)
        for p in new:
            subprocess.run(["rm", "-rf", str(p)], check=True)
    captured = capsys.readouterr()
    text = captured.err.strip()
    if code in (0, None):
        return f"accepted (status {code}); stdout: {captured.out[-300:]}"
    if written:
        return f"wrote {written} before refusing"
    if "Traceback" in captured.err + captured.out:
        return f"printed a traceback: {text[-300:]}"
    if len(text.splitlines()) > MAX_LINES:
        return f"{len(text.splitlines())} lines of message: {text[:400]}"
    if needle.lower() not in text.lower():
        return f"message does not name {needle!r}: {text[-400:]}"
    return None


def run_cases(cases, work, capsys, label, problem_of=refusal_problem) -> dict:
    """{case id: what went wrong} of cases (case id, argv, expected), each judged by problem_of(argv, work, capsys,
    expected) (test_damaged_corpus.py passes its own); prints how many were refused cleanly."""
    problems = {}
    for case_id, argv, expected in cases:
        problem = problem_of(argv, work, capsys, expected)
        if problem:
            problems[case_id] = problem
    with capsys.disabled():
        print(f"\n{label}: {len(cases)} cases, {len(cases) - len(problems)} refused cleanly")
    return problems


def test_invalid_training_configs_are_refused_before_ray_starts(inputs, tmp_path, monkeypatch, capsys, no_ray):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    configs = tmp_path / "configs"
    configs.mkdir()
    cases = []
    for n, (case_id, text, needle) in enumerate(config_cases()):
        path = configs / f"case{n:03d}.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        cases.append((case_id, ["train", "--data", inputs["latents"], "--config", str(path), "--storage",
                                str(work / "out"), "--tracking-uri", f"sqlite:///{work}/out/mlflow.db"], needle))
    assert len(cases) >= 60
    problems = run_cases(cases, work, capsys, "invalid training configs")
    assert not problems, "\n".join(f"{k}: {v}" for k, v in problems.items())


def test_invalid_command_lines_of_every_step_are_refused_before_ray_starts(inputs, tmp_path, monkeypatch, capsys,
                                                                          no_ray):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    digits_tree(work / "digits", classes=2, per_class=2)  # as the README's steps leave it: no shadowing
    cases = command_cases({**inputs, "out": str(work / "out")})
    steps = {argv[0] for _, argv, _ in cases if argv}
    assert steps >= {s for s in cli.build_parser()._subparsers._group_actions[0].choices}, steps
    assert len(cases) >= 40
    problems = run_cases(cases, work, capsys, "invalid command lines")
    assert not problems, "\n".join(f"{k}: {v}" for k, v in problems.items())


@pytest.mark.parametrize("argv,needle", [
    (["sample", "--model", "MODEL", "--num", "10", "--out", "out", "--shard-size", "0"], "--shard-size 0"),
    (["train", "--data", "LATENTS", "--config", "EMPTY", "--storage", "out"], "is empty"),
    (["tune", "--data", "LATENTS", "--space", "nope", "--trials", "2", "--max-steps", "4"], "nope"),
    (["train", "--data", "LATENTS", "--config", "DEEP", "--storage", "out", "--set", "train.seed=1"],
     "nested more than 50 levels deep"),
], ids=["sample-shard-size-0", "train-empty-config", "tune-unknown-space", "train-config-nested-too-deep"])
def test_refused_in_a_fresh_process(inputs, tmp_path, argv, needle):
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "deep.yaml").write_text("train: " + "[" * 5000 + "]" * 5000 + "\n")  # was a RecursionError
    names = {"MODEL": inputs["model"], "LATENTS": inputs["latents"], "EMPTY": str(tmp_path / "empty.yaml"),
             "DEEP": str(tmp_path / "deep.yaml")}
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": str(tmp_path / "ray")}
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", *[names.get(a, a) for a in argv]], cwd=work,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert needle in done.stderr and "Traceback" not in done.stderr + done.stdout
    assert len(done.stderr.strip().splitlines()) <= MAX_LINES, done.stderr
    assert not list(work.iterdir()) and not (tmp_path / "ray").exists()  # nothing written; Ray never started
