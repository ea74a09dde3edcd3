"""An unreachable tracking server or Ray address is one clear error within 15 seconds (issue 13: a dead tracking
server used to cost 4.3 minutes of silence): a TCP probe before MLflow or ray.init, and MLflow's own retries
cut short for the first request. Run in-process; none of these starts Ray."""

import socket
import time

import pytest

from pipelines import cli
from tests.pipelines.latent_sets import write_latent_set
from tests.pipelines.model_helpers import model_folder
from tests.pipelines.train_helpers import write_config

pytestmark = pytest.mark.timeout(120)
BOUND_S = 15


@pytest.fixture(scope="module")
def ports():
    """A port where nothing listens, and one that accepts connections but never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # the kernel completes handshakes; nobody ever reads or answers
    yield {"dead": dead, "silent": silent.getsockname()[1]}
    silent.close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    latents = write_latent_set(root / "latents", latent_shape=(1, 8, 8), shards=2, rows=32, classes=2)
    return {"latents": str(latents), "config": str(write_config(root / "c.yaml")), "model": str(model_folder(root)),
            "root": root}


def cases(p, inputs):
    train = ["train", "--data", inputs["latents"], "--config", inputs["config"], "--storage",
             str(inputs["root"] / "runs")]
    store = f"sqlite:///{inputs['root']}/store/mlflow.db"
    return {
        "train-dead-tracking": ([*train, "--tracking-uri", f"http://127.0.0.1:{p['dead']}"], "MLflow tracking server"),
        "train-silent-tracking": ([*train, "--tracking-uri", f"http://127.0.0.1:{p['silent']}"], "MLflow tracking"),
        "train-dead-address": ([*train, "--tracking-uri", store, "--address", f"127.0.0.1:{p['dead']}"], "Ray cluster"),
        "tune-dead-client-address": (["tune", "--data", inputs["latents"], "--space", "tiny", "--trials", "2",
                                      "--max-steps", "4", "--address", f"ray://127.0.0.1:{p['dead']}"], "Ray cluster"),
        "sample-dead-address": (["sample", "--model", inputs["model"], "--num", "4", "--out",
                                 str(inputs["root"] / "s"), "--address", f"127.0.0.1:{p['dead']}"], "Ray cluster"),
        "models-dead-tracking": (["models", "--tracking-uri", f"http://127.0.0.1:{p['dead']}", "list"], "MLflow"),
        "evaluate-dead-tracking": (["evaluate", "sweep", "--model", "models:/x@champion", "--reference", "digits",
                                    "--tracking-uri", f"http://127.0.0.1:{p['dead']}"], "MLflow"),
    }


@pytest.mark.parametrize("case", ["train-dead-tracking", "train-silent-tracking", "train-dead-address",
                                  "tune-dead-client-address", "sample-dead-address", "models-dead-tracking",
                                  "evaluate-dead-tracking"])
def test_an_unreachable_server_is_one_clear_error_within_seconds(case, ports, inputs, capsys, monkeypatch):
    argv, needle = cases(ports, inputs)[case]
    monkeypatch.chdir(inputs["root"])
    start = time.monotonic()
    status = cli.main(argv)
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert status == 2 and "cannot reach" in err and needle in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3, err
    assert elapsed < BOUND_S, f"{case}: {elapsed:.1f} s"
    with capsys.disabled():
        print(f"\n{case}: refused in {elapsed:.2f} s")
