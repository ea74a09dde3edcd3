"""The MLflow model registry: versions of EMA weights with a pyfunc that makes images, aliases, the CLI."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipelines import cli
from pipelines.models.registry import register_checkpoint, resolve_version, version_guidance
from pipelines.tracking import connect
from tests.pipelines.model_helpers import ema_network, fake_checkpoint, reference_images

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def store(tmp_path):
    return f"sqlite:///{tmp_path}/mlflow.db"


def test_versions_aliases_and_a_pyfunc_that_makes_the_same_images(tmp_path, store, capsys):
    import mlflow
    from mlflow.tracking import MlflowClient

    first = fake_checkpoint(tmp_path / "c1", seed=1)
    v1 = register_checkpoint(first, "digits", store, metrics={"quick_fd": 3.5}, config={"a": 1})
    assert sorted(v1.aliases) == ["challenger", "champion"]
    register_checkpoint(fake_checkpoint(tmp_path / "c2", seed=2), "digits", store)
    client = MlflowClient(store)
    assert {k: str(v) for k, v in client.get_registered_model("digits").aliases.items()} == {
        "champion": "1", "challenger": "2"}
    assert client.get_model_version("digits", "1").tags["metric.quick_fd"] == "3.5"
    assert version_guidance(resolve_version(client, "digits@champion")) == {
        "omega": 3.0, "t_min": 0.2, "t_max": 0.8, "steps": 1}

    # Weights travel as safetensors + JSON and the model as code: nothing pickled in the version.
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri="models:/digits/1", tracking_uri=store))
    files = {p.name for p in local.rglob("*") if p.is_file()}
    assert {"model.safetensors", "config.json", "MLmodel", "pyfunc_model.py"} <= files
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".pt", ".pth"))]

    mlflow.set_tracking_uri(store)
    generator = mlflow.pyfunc.load_model("models:/digits@champion")
    rows = pd.DataFrame({"class": [0, 3, 1], "seed": [5, 6, 7], "omega": [1.0, 2.0, 3.0]})
    images = generator.predict(rows)
    assert images.shape == (3, 8, 8, 3) and images.dtype == np.uint8
    # no `index` column: row i is image i of request `seed`
    expected = reference_images(ema_network(first), [0, 3, 1], [5, 6, 7], [0, 1, 2], torch.tensor([1.0, 2.0, 3.0]),
                                0.2, 0.8)
    assert np.array_equal(images, expected)
    assert len(np.unique(images)) > 10

    assert cli.main(["models", "--tracking-uri", store, "promote", "digits", "2", "--alias", "champion"]) == 0
    assert cli.main(["models", "--tracking-uri", store, "list"]) == 0
    assert "digits  (challenger=v2, champion=v2; 2 version(s))" in capsys.readouterr().out
    assert cli.main(["models", "--tracking-uri", store, "show", "digits@champion"]) == 0
    shown = capsys.readouterr().out
    assert "digits version 2" in shown and "guidance   omega 3.0, interval [0.2, 0.8], 1 step(s)" in shown
    assert "lineage    checkpoint" in shown and "model      width 32, depth 3, patch 2" in shown
    assert cli.main(["models", "--tracking-uri", store, "show", "digits/1"]) == 0
    assert "metrics    quick_fd 3.5" in capsys.readouterr().out
    assert cli.main(["models", "--tracking-uri", store, "show", "nothing@champion"]) == 2
    assert "nothing@champion" in capsys.readouterr().err


def tiny_sd_vae(path: Path) -> Path:
    """An AutoencoderKL with SD's 8x down-sampling and 4 latent channels, tiny widths, random weights."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(4, 4, 4, 4),
                  layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=2, sample_size=256).save_pretrained(path)
    return path


def test_import_official_registers_the_authors_checkpoint_with_its_guidance(tmp_path, store, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    from tests.core.test_model import authors_state_shapes, write_official

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_official(tmp_path / "iMF-B-2.pth", authors_state_shapes(depth=12, hidden=768, heads=12))
    vae = tiny_sd_vae(tmp_path / "vae")
    assert cli.main(["models", "--tracking-uri", store, "import-official", str(tmp_path / "iMF-B-2.pth"),
                     "--size", "B/2", "--name", "imf-b2", "--vae", str(vae)]) == 0
    version = MlflowClient(store).get_model_version_by_alias("imf-b2", "champion")
    assert version_guidance(version) == {"omega": 8.0, "t_min": 0.4, "t_max": 0.65, "steps": 1}
    mlflow.set_tracking_uri(store)
    images = mlflow.pyfunc.load_model("models:/imf-b2@champion").predict(pd.DataFrame({"class": [207]}))
    assert images.shape == (1, 256, 256, 3) and images.dtype == np.uint8


def test_guidance_sweep_stores_the_best_setting_that_sample_then_uses(tmp_path, store, capsys):
    from mlflow.tracking import MlflowClient

    register_checkpoint(fake_checkpoint(tmp_path / "c1", seed=1), "swept", store)
    assert cli.main(["evaluate", "sweep", "--model", "models:/swept@champion", "--reference", "digits",
                     "--omegas", "1,2,4", "--intervals", "0:1,0.3:0.7", "--num", "40", "--out",
                     str(tmp_path / "sweep"), "--tracking-uri", store]) == 0
    result = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert result["metric"] == "fd_pixels_digits_test" and len(result["rows"]) == 6
    best = min(result["rows"], key=lambda r: r["fd_pixels_digits_test"])
    assert (tmp_path / "sweep" / "fd_pixels_digits_test_vs_omega.png").stat().st_size > 1000
    client = MlflowClient(store)
    version = client.get_model_version_by_alias("swept", "champion")
    assert version_guidance(version) == {k: best[k] for k in ("omega", "t_min", "t_max", "steps")}
    runs = client.search_runs([client.get_experiment_by_name("imf/swept").experiment_id])
    assert len(client.get_metric_history(runs[0].info.run_id, "fd_pixels_digits_test")) == 6
    # the plot and the table travel with the version: tags naming artifacts of its own run
    import mlflow

    plot = mlflow.artifacts.download_artifacts(version.tags["imf.sweep.plot"], tracking_uri=store,
                                               dst_path=str(tmp_path / "dl"))
    table = json.loads(Path(mlflow.artifacts.download_artifacts(version.tags["imf.sweep.table"], tracking_uri=store,
                                                                dst_path=str(tmp_path / "dl"))).read_text())
    assert Path(plot).stat().st_size > 1000 and len(table["data"]) == 6

    capsys.readouterr()
    assert cli.main(["sample", "--model", "models:/swept@champion", "--num", "4", "--out", str(tmp_path / "s"),
                     "--tracking-uri", store, "--shard-size", "4", "--actors", "1"]) == 0
    plan = json.loads((tmp_path / "s" / "sample_plan.json").read_text())
    assert plan["guidance"] == {k: best[k] for k in ("omega", "t_min", "t_max", "steps")}


def test_models_reference_resolves_against_the_given_store_in_a_fresh_process(tmp_path, store):
    """A fresh process with nothing set globally: `models:/` must use the store it is given, and
    must not fall back to MLflow's default ./mlflow.db."""
    import os
    import subprocess
    import sys

    register_checkpoint(fake_checkpoint(tmp_path / "c1", seed=1), "fresh", store)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    code = ("import sys; from pipelines.models.registry import model_folder; "
            "folder, version = model_folder(sys.argv[1], sys.argv[2], dst=sys.argv[3]); "
            "print(folder, version.version)")
    # registering set MLFLOW_TRACKING_URI in this process's environment: the fresh one must not inherit it
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    run = subprocess.run([sys.executable, "-c", code, "models:/fresh@champion", store, str(tmp_path / "dl")],
                         cwd=cwd, capture_output=True, text=True, timeout=120,
                         env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[3])})
    assert run.returncode == 0, run.stderr[-2000:]
    folder, version = run.stdout.split()[-2:]
    assert version == "1" and (Path(folder) / "model.safetensors").is_file()
    assert not list(cwd.iterdir())  # no stray mlflow.db or mlruns/


def test_a_relative_sqlite_store_is_the_file_under_the_working_folder(tmp_path, monkeypatch):
    """`--tracking-uri sqlite:///runs/mlflow.db` (MLflow's relative form) names ./runs/mlflow.db: registering
    there keeps its artifacts beside it, and the absolute URI of that file then finds the version from anywhere."""
    monkeypatch.chdir(tmp_path)
    register_checkpoint(fake_checkpoint(tmp_path / "c1", seed=1), "rel", "sqlite:///runs/mlflow.db")
    assert (tmp_path / "runs" / "mlflow.db").is_file() and (tmp_path / "runs" / "artifacts").is_dir()
    monkeypatch.chdir(tmp_path / "c1")
    client, _ = connect(f"sqlite:///{tmp_path}/runs/mlflow.db")
    assert int(resolve_version(client, "models:/rel@challenger").version) == 1
