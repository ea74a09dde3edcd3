"""Training against an MLflow tracking server over HTTP, which disappears mid-run."""

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from tests.pipelines.train_helpers import batch_log, train, write_config

pytestmark = pytest.mark.timeout(600)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp_path, port):
    db = tmp_path / "server.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination", str(tmp_path / "server_artifacts"),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc, db
        except OSError as err:
            if proc.poll() is not None:
                raise RuntimeError("mlflow server exited at start") from err
            time.sleep(0.5)
    stop(proc)
    raise RuntimeError("mlflow server did not answer within 120 s")


def stop(proc):
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def test_metrics_reach_a_server_and_its_disappearance_only_warns(tmp_path, latents):
    from mlflow.tracking import MlflowClient

    port = free_port()
    proc, db = start_server(tmp_path, port)
    debug = tmp_path / "debug"
    debug.mkdir()
    config = write_config(tmp_path / "c.yaml", max_steps=8, checkpoint_every=4)

    def stop_after_step_3():
        deadline = time.time() + 300
        while time.time() < deadline and not any(e["step"] >= 3 for e in batch_log(debug, 0)):
            time.sleep(0.2)
        stop(proc)

    killer = threading.Thread(target=stop_after_step_3, daemon=True)
    killer.start()
    try:
        status = train(latents, config, tmp_path / "runs", "http", workers=1, debug=debug,
                       tracking_uri=f"http://127.0.0.1:{port}")
    finally:
        killer.join(timeout=60)
        stop(proc)
    assert status == 0  # the run finished although the server vanished at step 3
    assert [e["step"] for e in batch_log(debug, 0)][-1] == 7
    client = MlflowClient(f"sqlite:///{db}")
    run = client.search_runs([client.get_experiment_by_name("imf/images/Micro-2").experiment_id])[0]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "mse_u")]
    assert steps[:3] == [1, 2, 3] and run.data.params["model.name"] == "Micro/2"
