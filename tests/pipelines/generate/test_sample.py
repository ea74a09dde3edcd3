"""`imf sample`: class-balanced, per-index seeded generation on Ray Data, resumable after a kill."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pipelines import cli
from tests.pipelines.listening import exposed, listening
from tests.pipelines.model_helpers import model_folder, reference_images
from tests.run_hooks import hooks_file

pytestmark = pytest.mark.timeout(900)


def sample_args(model, out, *extra):
    return ["sample", "--model", str(model), "--num", "12", "--out", str(out), "--shard-size", "3",
            "--omega", "2.0", "--t-min", "0.1", "--t-max", "0.9", *extra]


def test_images_are_fixed_per_index_and_class_balanced(tmp_path, ray_session):
    from imf_core import load_model

    model = model_folder(tmp_path)
    assert cli.main(sample_args(model, tmp_path / "a", "--classes", "0,1,3", "--batch-size", "2",
                                "--actors", "1")) == 0
    assert cli.main(sample_args(model, tmp_path / "b", "--classes", "0,1,3", "--batch-size", "5",
                                "--actors", "2")) == 0
    a = np.load(tmp_path / "a" / "samples.npz")
    b = np.load(tmp_path / "b" / "samples.npz")
    assert a["arr_0"].shape == (12, 8, 8, 3) and a["arr_0"].dtype == np.uint8
    assert a["labels"].tolist() == [0, 1, 3] * 4  # N / classes of each class
    assert np.array_equal(a["arr_0"], b["arr_0"])  # whatever the batch size or the number of actors
    net = load_model(model).eval()
    expected = reference_images(net, a["labels"], [0] * 12, range(12), 2.0, 0.1, 0.9)
    assert np.array_equal(a["arr_0"], expected)

    assert cli.main(sample_args(model, tmp_path / "png", "--format", "png", "--classes", "0,1,3")) == 0
    pngs = sorted((tmp_path / "png" / "images").glob("*.png"))
    assert [p.name for p in pngs][:2] == ["0000000.png", "0000001.png"] and len(pngs) == 12
    assert cli.main(sample_args(model, tmp_path / "pq", "--format", "parquet", "--classes", "0,1,3")) == 0
    from pipelines.evaluation.image_sets import scan_images

    for folder in (tmp_path / "png" / "images", tmp_path / "pq" / "parts"):
        scan = scan_images(folder)
        assert np.array_equal(scan.images, a["arr_0"])  # every format holds the same images


def test_a_killed_job_rerun_finishes_only_the_missing_shards_and_listened_on_loopback_only(tmp_path, ray_session):
    model = model_folder(tmp_path)
    whole = tmp_path / "whole"
    assert cli.main(sample_args(model, whole, "--actors", "1")) == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *sample_args(model, killed, "--actors", "1")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "IMF_TEST_HOOKS": str(hooks_file(tmp_path / "hooks", sample_slow_s=3))})
    parts = killed / "parts"
    deadline = time.time() + 600
    while time.time() < deadline and len(list(parts.glob("shard-*.parquet"))) < 1:
        time.sleep(0.2)
    sockets = listening(proc.pid)  # a local sampling job, mid-run: its own Ray instance and actor
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    survivors = {p.name: p.stat().st_mtime_ns for p in parts.glob("shard-*.parquet")}
    assert 1 <= len(survivors) < 4, "the job was not killed part-way"
    assert len(sockets) >= 3 and not exposed(sockets), f"listening beyond loopback: {exposed(sockets)}"
    assert not (killed / "samples.npz").exists()

    assert cli.main(sample_args(model, killed, "--actors", "1")) == 0
    assert {n: t for n, t in ((p.name, p.stat().st_mtime_ns) for p in parts.glob("shard-*.parquet"))
            if n in survivors} == survivors  # finished shards were not redone
    assert (killed / "samples.npz").read_bytes() == (whole / "samples.npz").read_bytes()
    assert len(np.load(killed / "samples.npz")["arr_0"]) == 12


def test_a_different_request_into_the_same_folder_is_refused(tmp_path, capsys):
    model = model_folder(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "sample_plan.json").write_text('{"num": 5}')
    assert cli.main(sample_args(model, out)) == 2
    assert "another request" in capsys.readouterr().err
    assert cli.main(sample_args(model, tmp_path / "x", "--classes", "7")) == 2
    assert "outside 0..3" in capsys.readouterr().err


def test_a_pyfunc_row_is_the_same_image_as_the_sampling_job_makes(tmp_path, ray_session):
    """One noise function for every entry point: row (class, seed, index) of the MLflow pyfunc and image `index`
    of `imf sample --seed SEED` are the same bytes."""
    import mlflow
    import pandas as pd

    from pipelines.models.registry import register_folder

    store = f"sqlite:///{tmp_path}/mlflow.db"
    register_folder(model_folder(tmp_path), "same", store)
    assert cli.main(["sample", "--model", "models:/same@champion", "--num", "8", "--out", str(tmp_path / "s"),
                     "--seed", "7", "--omega", "2.0", "--t-min", "0.1", "--t-max", "0.9", "--tracking-uri", store,
                     "--classes", "2,0,3", "--shard-size", "4", "--actors", "1"]) == 0
    batch = np.load(tmp_path / "s" / "samples.npz")
    mlflow.set_tracking_uri(store)
    generator = mlflow.pyfunc.load_model("models:/same@champion")
    picked = [6, 1, 3]  # any images of the job, in any order, one per row
    rows = pd.DataFrame({"class": batch["labels"][picked], "seed": [7] * 3, "index": picked,
                         "omega": [2.0] * 3, "t_min": [0.1] * 3, "t_max": [0.9] * 3})
    images = generator.predict(rows)
    assert images.dtype == np.uint8 and np.array_equal(images, batch["arr_0"][picked])
    with pytest.raises(ValueError, match=r"classes \[4\] are outside 0..3"):
        generator.predict(pd.DataFrame({"class": [1, 4]}))
