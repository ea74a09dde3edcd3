"""`imf sample` into a bucket, killed part-way and re-run, then `imf evaluate` reading the bucket, on a real
S3 API (moto's HTTP server on 127.0.0.1)."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pipelines import cli
from tests.pipelines.generate.test_sample import sample_args
from tests.pipelines.model_helpers import model_folder
from tests.run_hooks import hooks_file

pytestmark = pytest.mark.timeout(600)


def test_sample_into_a_bucket_killed_and_rerun_then_evaluate_from_it(s3, ray_session, tmp_path, capsys):
    bucket = s3.bucket()
    model = model_folder(tmp_path)
    whole = tmp_path / "whole"
    assert cli.main(sample_args(model, whole, "--actors", "1")) == 0

    out = f"{bucket}/samples"
    # AWS_ENDPOINT_URL: the server
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *sample_args(model, out, "--actors", "1")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "IMF_TEST_HOOKS": str(hooks_file(tmp_path / "hooks", sample_slow_s=3))})
    deadline = time.time() + 300
    while time.time() < deadline and not any(k.startswith("parts/") for k in s3.keys(out)):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    survivors = [k for k in s3.keys(out) if k.startswith("parts/")]
    assert 1 <= len(survivors) < 4, "the job was not killed part-way"
    print(f"killed with {len(survivors)} of 4 parts in the bucket")
    assert "samples.npz" not in s3.keys(out) and "manifest.json" not in s3.keys(out)

    capsys.readouterr()
    assert cli.main(sample_args(model, out, "--actors", "1")) == 0
    assert f"{len(survivors)} of 4 shards already done" in capsys.readouterr().out
    keys = s3.keys(out)
    assert [k for k in keys if k.startswith("parts/")] == [f"parts/shard-{s:05d}.parquet" for s in range(4)]
    assert s3.read(f"{out}/samples.npz") == (whole / "samples.npz").read_bytes()  # identical bytes
    arrays = np.load(io.BytesIO(s3.read(f"{out}/samples.npz")))
    assert arrays["arr_0"].shape == (12, 8, 8, 3)  # exactly N images
    assert len({image.tobytes() for image in arrays["arr_0"]}) == 12  # no duplicates
    assert json.loads(s3.read(f"{out}/manifest.json"))["output"] == f"{out}/samples.npz"

    # evaluate reads the samples (and a reference written there) through the bucket: the local scores.
    ref = f"{bucket}/ref.npz"
    assert cli.main(["evaluate", "reference", "--images", str(whole), "--out", ref, "--no-inception"]) == 0
    scores = {}
    for where, reference in ((out, ref), (str(whole), ref)):
        result = tmp_path / f"scores_{len(scores)}.json"
        assert cli.main(["evaluate", "--samples", where, "--reference", reference, "--metrics", "fd_pixels",
                         "--out", str(result), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]) == 0
        scores[where] = json.loads(result.read_text())
    bucket_scores, local_scores = scores.values()
    assert bucket_scores == local_scores and len(bucket_scores) == 1
    assert list(bucket_scores.values())[0] == pytest.approx(0.0, abs=1e-3)  # the same images as the reference
