"""Damaged data never ends in a traceback (issue 30): a generated corpus of damaged latent sets, sample folders and
references (tests/pipelines/damaged_cases.py), each refused by `imf train` or `imf evaluate` with a short message
naming the file and the fix, before Ray starts and before anything is written. In-process (`cli.main`), plus
one real process of each command."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines import cli
from pipelines.config import load_config
from pipelines.data.latent_check import check_latent_set
from tests.pipelines.damaged_cases import evaluate_cases, latent_cases
from tests.pipelines.latent_sets import write_latent_set
from tests.pipelines.test_refusals import RayStarted, no_ray, run_cases  # noqa: F401 - no_ray: a fixture
from tests.pipelines.train_helpers import write_config

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("no_ray")]  # Ray must never start here
ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 8


def refusal_problem(argv, work: Path, capsys, needles) -> str | None:
    """None when `imf ARGV` is refused cleanly, naming every needle; else what is wrong with the way it ended."""
    try:
        code = cli.main(argv)
    except RayStarted:
        return "Ray started before the input was refused"
    except Exception as err:  # noqa: BLE001 - a traceback is exactly what this test looks for
        return f"traceback: {err.__class__.__name__}: {err}"
    captured = capsys.readouterr()
    text = captured.err.strip()
    written = sorted(p.name for p in work.iterdir())
    if code != 2:
        return f"status {code}; stderr: {text[-300:]}; stdout: {captured.out[-300:]}"
    if written:
        return f"wrote {written} before refusing"
    if "Traceback" in captured.err + captured.out or len(text.splitlines()) > MAX_LINES:
        return f"not a short message: {text[:600]}"
    missing = [n for n in needles if n.lower() not in text.lower()]
    return f"message does not name {missing}: {text[-600:]}" if missing else None


def test_damaged_latent_sets_are_refused_by_imf_train_before_ray_starts(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    config = write_config(tmp_path / "c.yaml")
    store = f"sqlite:///{tmp_path}/store/mlflow.db"
    cases = [(case_id, ["train", "--data", str(folder), "--config", str(config), "--storage", str(work / "out"),
                        "--tracking-uri", store, *extra], needles)
             for case_id, folder, extra, needles in latent_cases(tmp_path / "sets")]
    assert len(cases) >= 50
    problems = run_cases(cases, work, capsys, "damaged latent sets (imf train)", refusal_problem)
    assert not problems, "\n".join(f"{k}: {v}" for k, v in problems.items())


def test_imf_tune_checks_the_latent_set_too(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    latents = write_latent_set(tmp_path / "latents")
    (latents / "shards/shard-00001.parquet").write_bytes(b"PAR1")
    argv = ["tune", "--data", str(latents), "--space", "tiny", "--trials", "2", "--max-steps", "4",
            "--storage", str(work / "out"), "--tracking-uri", f"sqlite:///{tmp_path}/store/mlflow.db"]
    assert refusal_problem(argv, work, capsys, ["shard-00001.parquet", "not a readable Parquet"]) is None


def test_damaged_sample_folders_and_references_are_refused_by_imf_evaluate(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    store = f"sqlite:///{tmp_path}/store/mlflow.db"
    cases = [(case_id, ["evaluate", "--samples", given["samples"], "--reference", given["reference"],
                        "--out", str(tmp_path / "metrics.json"), "--tracking-uri", store], needles)
             for case_id, given, needles in evaluate_cases(tmp_path / "sets")]
    assert len(cases) >= 35
    problems = run_cases(cases, work, capsys, "damaged sample folders and references (imf evaluate)", refusal_problem)
    assert not problems, "\n".join(f"{k}: {v}" for k, v in problems.items())
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "store").exists()


def test_the_latent_check_reads_footers_only(tmp_path):
    """Its cost: a set of 64 shards is checked in well under a second (footers in parallel threads)."""
    latents = write_latent_set(tmp_path / "latents", shards=64, rows=64)
    model = load_config(write_config(tmp_path / "c.yaml")).model
    start = time.perf_counter()
    manifest = check_latent_set(latents, model)
    took = time.perf_counter() - start
    print(f"\nthe latent check of 64 shards took {took * 1e3:.1f} ms")
    assert manifest["counts"]["encoded"] == 64 * 64 and took < 2.0


def run_imf(argv, tmp_path, work):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": str(tmp_path / "ray"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *argv], cwd=work, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_real_process_refuses_damaged_data_before_ray_starts(tmp_path, command):
    work = tmp_path / "work"
    work.mkdir()
    if command == "train":
        latents = write_latent_set(tmp_path / "latents")
        (latents / "shards/shard-00000.parquet").write_bytes(b"PAR1\x00\x01")
        argv = ["train", "--data", str(latents), "--config", str(write_config(tmp_path / "c.yaml")), "--storage",
                str(tmp_path / "runs"), "--tracking-uri", f"sqlite:///{tmp_path}/store/mlflow.db"]
        needle = "shard-00000.parquet is not a readable Parquet file"
    else:
        samples = tmp_path / "samples"
        samples.mkdir()
        (samples / "s.npz").write_bytes(b"PK\x03\x04 cut")
        argv = ["evaluate", "--samples", str(samples), "--reference", "digits", "--tracking-uri",
                f"sqlite:///{tmp_path}/store/mlflow.db"]
        needle = "s.npz is not a readable .npz"
    done = run_imf(argv, tmp_path, work)
    assert done.returncode == 2, done.stderr
    assert needle in done.stderr and "Traceback" not in done.stderr + done.stdout, done.stderr
    assert len(done.stderr.strip().splitlines()) <= MAX_LINES, done.stderr
    assert not list(work.iterdir()) and not (tmp_path / "ray").exists() and not (tmp_path / "runs").exists()
