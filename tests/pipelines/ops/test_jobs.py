"""`imf submit` and `imf jobs` without a cluster: what is shipped, what is checked before anything is
sent, and the one-line errors. The run against a real head is in test_submit_cluster.py."""

import zipfile
from pathlib import Path

import pytest

from pipelines import cli
from pipelines.errors import UserError
from pipelines.ops import jobs
from tests.infra.infra_files import REPO
from tests.infra.local_cluster import free_port

TRAIN = ["train", "--data", "/shared/latents", "--config", "pipelines/configs/imf_b2.yaml"]


def shipped_files(root, env) -> set[str]:
    """The files Ray packs for this runtime env, with Ray's own packing code."""
    from pipelines.ray_seams import runtime_env_package

    target = root.parent / "package.zip"
    runtime_env_package(str(root), target, env["excludes"])
    with zipfile.ZipFile(target) as z:
        return {n for n in z.namelist() if not n.endswith("/")}


def test_the_checkout_is_shipped_without_environments_data_or_runs(tmp_path):
    root = tmp_path / "checkout"
    keep = ["pyproject.toml", "pipelines/cli.py", "pipelines/configs/b2.yaml", "tune/spaces/guidance.yaml"]
    drop = [".venv/lib/site.py", ".git/HEAD", "data/images/0.png", "mlruns/mlflow.db", "runs/r/checkpoint.json",
            "imf_runs/r/imf_run.json", "demo_out/grid.png", "latents/shards/shard-00000.parquet",
            "model/model.safetensors", "pipelines/__pycache__/cli.cpython-311.pyc", "imf.egg-info/PKG-INFO"]
    for name in keep + drop:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x")
    env = jobs.runtime_env(root, excludes=["extra/"], env_vars={"A": "1"})
    assert env["working_dir"] == str(root) and env["env_vars"]["A"] == "1"
    assert shipped_files(root, env) == set(keep)


def test_this_checkout_is_the_default_working_dir():
    assert jobs.checkout_root() == REPO


def test_an_installed_package_ships_its_three_packages():
    modules = jobs.runtime_env(None)["py_modules"]
    assert [Path(m).name for m in modules] == ["imf_core", "pipelines", "tune"]
    assert all((Path(m) / "__init__.py").is_file() for m in modules)


def test_steps_that_take_address_run_on_the_jobs_cluster():
    argv = jobs.step_argv("train", [*TRAIN[1:], "--tracking-uri", "http://mlflow:5000"])
    assert argv[:3] == ["train", "--address", "auto"]
    given = jobs.step_argv("train", [*TRAIN[1:], "--address", "ray://h:10001", "--tracking-uri", "http://m:5000"])
    assert given == [*TRAIN, "--address", "ray://h:10001", "--tracking-uri", "http://m:5000"]
    assert jobs.step_argv("data", ["embedded", "--out", "/shared/digits"]) == [
        "data", "embedded", "--out", "/shared/digits"]


def test_a_tracked_step_without_a_tracking_server_is_refused():
    with pytest.raises(UserError, match="--tracking-uri http://MLFLOW_HOST:5000"):
        jobs.step_argv("train", TRAIN[1:])
    with pytest.raises(UserError, match="imf sample on a cluster needs --tracking-uri"):
        jobs.step_argv("sample", ["--model", "models:/imf@champion", "--num", "8", "--out", "/shared/s"])


def test_steps_that_use_no_store_without_a_uri_are_submitted_as_given():
    encode = ["--images", "/shared/img", "--out", "/shared/lat"]
    assert jobs.step_argv("encode", encode) == ["encode", "--address", "auto", *encode]
    sample = ["--model", "/shared/runs/model", "--num", "8", "--out", "/shared/s"]
    assert jobs.step_argv("sample", sample) == ["sample", "--address", "auto", *sample]


@pytest.mark.parametrize("step", ["submit", "jobs"])
def test_submit_and_jobs_are_not_submitted(step):
    with pytest.raises(UserError, match="submit a step"):
        jobs.step_argv(step, ["list"])


def test_step_arguments_are_checked_before_anything_is_sent(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["submit", "--address", "http://127.0.0.1:9", *TRAIN, "--bogus"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_an_unreachable_cluster_is_one_clear_line(capsys, monkeypatch):
    port = free_port()
    # Ray would let these override the address given; ours must win.
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:1")
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:1")
    status = cli.main(["submit", "--address", f"127.0.0.1:{port}", *TRAIN, "--tracking-uri", "http://m:5000"])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert f"cannot reach the Ray Jobs API at http://127.0.0.1:{port}" in err and "ray start --head" in err
    assert cli.main(["jobs", "list", "--address", f"http://127.0.0.1:{port}"]) == 2


def test_the_ray_client_port_is_refused_with_the_jobs_port(capsys):
    assert cli.main(["jobs", "--address", "ray://head.internal:10001", "list"]) == 2
    assert "use --address http://head.internal:8265" in capsys.readouterr().err


def test_env_must_be_key_value(capsys):
    with pytest.raises(SystemExit):
        cli.main(["submit", "--env", "NOVALUE", *TRAIN])
    assert "'NOVALUE' is not KEY=VALUE" in capsys.readouterr().err


def test_paths_that_exist_only_here_are_named(tmp_path, monkeypatch):
    root = tmp_path / "checkout"
    for folder in ("pipelines/configs", "mlruns", "../elsewhere/latents"):
        (root / folder).mkdir(parents=True)
    (root / "pipelines/configs/b2.yaml").write_text("x")
    monkeypatch.chdir(root)
    args = ["--data", "../elsewhere/latents", "--config", "pipelines/configs/b2.yaml", "--out", "mlruns",
            "--abs", str(tmp_path / "elsewhere"), "--model", "B/2"]
    assert jobs.local_only_paths(args, root) == ["../elsewhere/latents", "mlruns"]


@pytest.mark.parametrize("status,code,expected", [("SUCCEEDED", 0, 0), ("FAILED", 2, 2), ("FAILED", None, 1),
                                                  ("STOPPED", None, 1)])
def test_exit_status_follows_the_job(status, code, expected):
    from ray.job_submission import JobInfo, JobStatus

    assert jobs.status_code(JobInfo(status=JobStatus(status), entrypoint="x", driver_exit_code=code)) == expected
