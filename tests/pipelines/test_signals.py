"""SIGTERM and Ctrl-C (SIGINT) to a real process of each long-running command, sent to the process alone and to its
whole process group (as `timeout`, a terminal or a container's stop delivers them). Each case ends with one line and
the command's status (143 / 130; 75 with a checkpoint for `imf train`; 0 for `imf serve`), no stack dump and no
traceback, and leaves no process of its own behind. The cases of a command run side by side (stopping.py): all four
for `imf evaluate`, the usual two for the rest (SIGTERM to the process alone, as `kill` or a container's stop sends
it; Ctrl-C to the group, as a terminal sends it). The other two go through the same handler: the driver gets the
same signal either way, and a local Ray instance runs in process groups of its own, which a signal to the
command's group does not reach. `imf train`'s SIGTERM to the process alone is in train/test_preemption.py, with
the resume. A gate in the tests' hooks (tests/run_hooks.py) holds encode, sample and evaluate mid-run until the
signal. `imf submit`: tests/pipelines/ops/test_submit_cluster.py."""

import signal

import numpy as np
import pytest

from tests.infra.local_cluster import free_port
from tests.pipelines.latent_sets import write_latent_set
from tests.pipelines.model_helpers import model_folder
from tests.pipelines.stopping import NAMES, USUAL, assert_stopped, batch_status, stop_each_way
from tests.pipelines.train_helpers import batch_log, digits_tree, write_config
from tests.run_hooks import begun

pytestmark = pytest.mark.timeout(600)


def test_encode(tmp_path):
    images = digits_tree(tmp_path / "images", classes=2, per_class=8)
    results = stop_each_way(tmp_path, lambda f: ["encode", "--images", str(images), "--out", str(f / "latents"),
                                                 "--codec", "pixels", "--resolution", "8", "--shard-size", "4"],
                            lambda p: begun(p.folder / "hooks", "encode_shard"), cases=USUAL)
    assert_stopped(results, batch_status, lambda s: f"imf encode: stopped ({NAMES[s]}); the shards written are kept")


def test_sample(tmp_path):
    model = model_folder(tmp_path)
    results = stop_each_way(tmp_path, lambda f: ["sample", "--model", str(model), "--num", "16", "--shard-size", "4",
                                                 "--actors", "1", "--out", str(f / "samples")],
                            lambda p: begun(p.folder / "hooks", "sample_shard"), cases=USUAL)
    assert_stopped(results, batch_status, lambda s: f"imf sample: stopped ({NAMES[s]}); the shards written are kept")


def test_evaluate(tmp_path):
    samples = tmp_path / "samples"
    samples.mkdir()
    rng = np.random.default_rng(0)
    np.savez(samples / "s.npz", arr_0=rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8), labels=np.arange(40) % 10)
    results = stop_each_way(tmp_path, lambda f: ["evaluate", "--samples", str(samples), "--reference", "digits",
                                                 "--tracking-uri", f"sqlite:///{f}/mlflow.db"],
                            lambda p: begun(p.folder / "hooks", "evaluate_batch"))
    assert_stopped(results, batch_status, lambda s: f"imf evaluate: stopped ({NAMES[s]})")


def test_train_checkpoints_and_exits_75(tmp_path):
    latents = write_latent_set(tmp_path / "latents", latent_shape=(1, 8, 8), shards=2, rows=32, classes=4)
    config = write_config(tmp_path / "c.yaml", max_steps=100000, checkpoint_every=1000, log_every=1)
    results = stop_each_way(tmp_path, lambda f: ["train", "--data", str(latents), "--config", str(config),
                                                 "--workers", "1", "--storage", str(f / "runs"), "--name", "r",
                                                 "--tracking-uri", f"sqlite:///{f}/mlflow.db"],
                            lambda p: len(batch_log(p.folder / "hooks", 0)) >= 2, cases=[(signal.SIGINT, "group")])
    assert_stopped(results, lambda s: 75, lambda s: "Continue with the same command and --resume r")
    [(_, _, _, text, _)] = results
    assert "stopped (Ctrl-C)" in text and "checkpoint" in text, text[-2000:]


def test_serve_stops_with_status_0(tmp_path):
    model = model_folder(tmp_path)
    results = stop_each_way(tmp_path, lambda f: ["serve", "--model", str(model), "--port", str(free_port())],
                            lambda p: " at http://127.0.0.1:" in p.text, cases=USUAL)
    assert_stopped(results, lambda s: 0, lambda s: "imf serve: stopped")


def test_tune(tmp_path):
    latents = write_latent_set(tmp_path / "latents", latent_shape=(1, 8, 8), shards=2, rows=32, classes=4)
    results = stop_each_way(tmp_path, lambda f: ["tune", "--data", str(latents), "--space", "tiny", "--trials", "2",
                                                 "--max-steps", "100000", "--evals", "4", "--eval-samples", "16",
                                                 "--storage", str(f / "runs"), "--max-concurrent", "1",
                                                 "--tracking-uri", f"sqlite:///{f}/mlflow.db"],
                            lambda p: "running up to 1 trial(s) at a time" in p.text, cases=USUAL)  # Tune's fit begins
    assert_stopped(results, batch_status, lambda s: f"imf tune: stopped ({NAMES[s]})")
