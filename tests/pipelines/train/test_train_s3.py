"""Training from latents in a bucket (streamed by Ray Data), checkpoints into a bucket, and a resume from
there, on a real S3 API (moto's HTTP server on 127.0.0.1): the resumed run ends bit-identical to the
uninterrupted local run of the same digits (conftest.py's `whole`: 2 workers, 6 steps, streamed rows). Latents
held in memory resume bit-identical in test_preemption.py, and their per-epoch shares are checked in
test_batches.py; a worker that dies mid-run is restarted from the latest checkpoint in test_node_loss.py."""

import json

import pytest
import torch
from safetensors.torch import load_file

from pipelines import cli
from tests.pipelines.train_helpers import batch_log, digits_tree, train, write_config

pytestmark = pytest.mark.timeout(600)


def test_train_from_a_bucket_resumes_from_its_checkpoint_identical_to_an_uninterrupted_run(s3, whole, tmp_path,
                                                                                           capsys):
    reference, full = whole
    bucket = s3.bucket()
    images = digits_tree(tmp_path / "images")  # the digits of `whole`'s latents
    assert cli.main(["encode", "--images", str(images), "--out", f"{bucket}/latents", "--codec", "pixels",
                     "--resolution", "8", "--endpoint-url", s3.endpoint]) == 0
    # data_in_memory_gb 0: Ray Data's read_parquet streams the shards from the bucket to the workers.
    first = write_config(tmp_path / "first.yaml", max_steps=3, checkpoint_every=3, data_in_memory_gb=0.0)
    debug = tmp_path / "debug"
    debug.mkdir()
    store = f"sqlite:///{tmp_path}/mlflow.db"
    assert train(f"{bucket}/latents", first, f"{bucket}/runs", "s3run", debug=debug, tracking_uri=store) == 0
    keys = s3.keys(f"{bucket}/runs/s3run")
    assert "imf_run.json" in keys
    assert [json.loads(s3.read(f"{bucket}/runs/s3run/{c}/progress.json"))["step"] for c in checkpoints(keys)] == [3]
    assert f"latest checkpoint: {bucket}/runs/s3run/checkpoint_" in capsys.readouterr().out

    # Resumed from the bucket's checkpoint: only steps 3 to 5 run, and their checkpoint joins the first.
    assert train(f"{bucket}/latents", full, f"{bucket}/runs", "s3run", debug=debug, extra=("--resume", "s3run"),
                 tracking_uri=store) == 0
    assert [e["step"] for e in batch_log(debug, 0)] == [0, 1, 2, 3, 4, 5]  # step 3 on, not from scratch
    keys = s3.keys(f"{bucket}/runs/s3run")
    assert [json.loads(s3.read(f"{bucket}/runs/s3run/{c}/progress.json"))["step"] for c in checkpoints(keys)] == [3, 6]
    weights = [k for k in keys if k.endswith("model/model.safetensors")]
    assert len(weights) == 2 and all(s3.read(f"{bucket}/runs/s3run/{k}")[:8] for k in weights)

    # Bit-identical to the uninterrupted run: the weights, and every worker's rows at every step.
    uninterrupted = load_file(str(reference / "debug" / "params_rank0.safetensors"))
    resumed = load_file(str(debug / "params_rank0.safetensors"))
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)
    for rank in (0, 1):
        assert batch_log(debug, rank) == batch_log(reference / "debug", rank)
    epochs = [set(sum((e["index"] for e in batch_log(reference / "debug", r)[:4]), [])) for r in (0, 1)]
    assert len(epochs[0]) == len(epochs[1]) == 32 and not epochs[0] & epochs[1]  # an epoch: disjoint shares

    # A checkpoint in the bucket registers like a local one.
    latest = f"{bucket}/runs/s3run/{checkpoints(keys)[-1]}"
    assert cli.main(["models", "--tracking-uri", store, "register", latest, "--name",
                     "s3model", "--data", f"{bucket}/latents"]) == 0
    assert "registered s3model version 1" in capsys.readouterr().out


def checkpoints(keys) -> list[str]:
    """The checkpoint folders among a run's keys, oldest first."""
    return sorted({k.split("/")[0] for k in keys if k.startswith("checkpoint_") and "/" in k})
