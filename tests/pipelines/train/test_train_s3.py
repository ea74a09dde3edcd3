"""Training from latents in a bucket (streamed by Ray Data), checkpoints into a bucket, and a resume from
there, on a real S3 API (moto's HTTP server on 127.0.0.1). That a resume equals an uninterrupted run is
shown on local folders (test_train.py); here, that it starts from the bucket's checkpoint."""

import json

import pytest

from pipelines import cli
from tests.pipelines.train_helpers import batch_log, digits_tree, write_config

pytestmark = pytest.mark.timeout(600)


def train(data, config, storage, name, tmp_path, debug, *extra):
    return cli.main(["train", "--data", data, "--config", str(config), "--workers", "1", "--storage", storage,
                     "--name", name, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--debug-dir", str(debug),
                     *extra])


def test_train_streams_bucket_latents_checkpoints_into_the_bucket_and_resumes(s3, ray_session, tmp_path, capsys):
    bucket = s3.bucket()
    images = digits_tree(tmp_path / "images")
    assert cli.main(["encode", "--images", str(images), "--out", f"{bucket}/latents", "--codec", "pixels",
                     "--resolution", "8", "--endpoint-url", s3.endpoint]) == 0
    # data_in_memory_gb 0: Ray Data's read_parquet streams the shards from the bucket to the workers.
    first = write_config(tmp_path / "first.yaml", max_steps=2, checkpoint_every=2, data_in_memory_gb=0.0)
    full = write_config(tmp_path / "full.yaml", max_steps=4, checkpoint_every=2, data_in_memory_gb=0.0)
    debug = tmp_path / "debug"
    debug.mkdir()
    assert train(f"{bucket}/latents", first, f"{bucket}/runs", "s3run", tmp_path, debug) == 0
    keys = s3.keys(f"{bucket}/runs/s3run")
    assert "imf_run.json" in keys
    assert [json.loads(s3.read(f"{bucket}/runs/s3run/{c}/progress.json"))["step"] for c in checkpoints(keys)] == [2]
    assert f"latest checkpoint: {bucket}/runs/s3run/checkpoint_" in capsys.readouterr().out

    # Resumed from the bucket's checkpoint: only steps 2 and 3 run, and their checkpoint joins the first.
    assert train(f"{bucket}/latents", full, f"{bucket}/runs", "s3run", tmp_path, debug, "--resume", "s3run") == 0
    assert [e["step"] for e in batch_log(debug, 0)] == [0, 1, 2, 3]
    keys = s3.keys(f"{bucket}/runs/s3run")
    assert [json.loads(s3.read(f"{bucket}/runs/s3run/{c}/progress.json"))["step"] for c in checkpoints(keys)] == [2, 4]
    weights = [k for k in keys if k.endswith("model/model.safetensors")]
    assert len(weights) == 2 and all(s3.read(f"{bucket}/runs/s3run/{k}")[:8] for k in weights)

    # A checkpoint in the bucket registers like a local one.
    latest = f"{bucket}/runs/s3run/{checkpoints(keys)[-1]}"
    assert cli.main(["models", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "register", latest, "--name",
                     "s3model", "--data", f"{bucket}/latents"]) == 0
    assert "registered s3model version 1" in capsys.readouterr().out


def checkpoints(keys) -> list[str]:
    """The checkpoint folders among a run's keys, oldest first."""
    return sorted({k.split("/")[0] for k in keys if k.startswith("checkpoint_") and "/" in k})
