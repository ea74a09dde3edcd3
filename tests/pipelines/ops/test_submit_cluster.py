"""`imf submit` against a real `ray start --head` and a real `mlflow server`, both on 127.0.0.1."""

import pytest

from pipelines import cli
from tests.infra.local_cluster import LOOPBACK, LocalHead, MlflowServer
from tests.pipelines.train_helpers import digits_tree, write_config

MODEL = "imf-cluster-test"


@pytest.fixture(scope="module")
def head():
    """One head for the file's tests: each submits jobs of its own (distinct submission ids)."""
    cluster = LocalHead(num_cpus=4).start()
    try:
        yield cluster
    finally:
        survivors = cluster.stop(grace=2)  # then SIGKILL: a test head need not drain
        assert not survivors, f"teardown left Ray processes running: {survivors}"


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path / "mlflow").start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.mark.timeout(900)
def test_submitted_train_reaches_the_server_and_the_registry(tmp_path, head, mlflow_server, capfd):
    from mlflow.tracking import MlflowClient

    latents = tmp_path / "latents"
    encode = ["encode", "--images", str(digits_tree(tmp_path / "images")), "--out", str(latents),
              "--codec", "pixels", "--resolution", "8"]
    assert cli.main(["submit", "--address", head.url, *encode]) == 0
    assert (latents / "manifest.json").is_file()
    config = write_config(tmp_path / "tiny.yaml")
    train = ["train", "--data", str(latents), "--config", str(config), "--workers", "1",
             "--storage", str(tmp_path / "runs"), "--tracking-uri", mlflow_server]

    # A step that fails on the cluster makes `imf submit` exit with the step's own status.
    assert cli.main(["submit", "--address", head.url, *train[:2], str(tmp_path / "missing"), *train[3:]]) == 2
    assert "data folder" in capfd.readouterr().out

    status = cli.main(["submit", "--address", head.url, "--submission-id", "imf-test-train",
                       *train, "--name", "cluster", "--register", MODEL])
    out, err = capfd.readouterr()
    assert status == 0, out[-3000:] + err[-3000:]
    assert f"registered models:/{MODEL}/1" in out  # the job's own output, streamed back
    assert "job imf-test-train SUCCEEDED" in err

    client = MlflowClient(mlflow_server)
    run = client.search_runs([client.get_experiment_by_name("imf/images/Micro-2").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.data.params["model.name"] == "Micro/2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "mse_u")] == [1, 2, 3]
    version = client.get_model_version_by_alias(MODEL, "challenger")
    assert version.version == "1" and version.run_id == run.info.run_id

    assert cli.main(["jobs", "--address", head.url, "list"]) == 0
    listing = capfd.readouterr().out
    assert "imf-test-train" in listing and "SUCCEEDED" in listing
    assert cli.main(["jobs", "logs", "imf-test-train", "--address", head.url]) == 0
    assert f"registered models:/{MODEL}/1" in capfd.readouterr().out
    assert cli.main(["jobs", "stop", "imf-test-train", "--address", head.url]) == 0
    assert "already finished (SUCCEEDED)" in capfd.readouterr().out
    assert cli.main(["jobs", "logs", "no-such-job", "--address", head.url]) == 2
    assert "no job 'no-such-job'" in capfd.readouterr().err

    exposed = [s for s in head.listening() if s[0] not in LOOPBACK]
    assert not exposed, f"the head listens beyond localhost: {exposed}"


@pytest.mark.timeout(600)
def test_a_signal_stops_following_and_leaves_the_job(tmp_path, head):
    """SIGTERM to the process alone and Ctrl-C to its group (stopping.USUAL), while `imf submit` follows a job
    that waits for a GPU this cluster lacks: it stops following (143 / 130) and the job is still there."""
    from ray.job_submission import JobSubmissionClient

    from tests.pipelines.stopping import USUAL, assert_stopped, batch_status, stop_each_way

    results = stop_each_way(tmp_path, lambda f: ["submit", "--address", head.url, "--submission-id", f"wait-{f.name}",
                                                 "--entrypoint-gpus", "1", "data", "embedded", "--out", str(f / "d")],
                            lambda p: "submitted to" in p.text, cases=USUAL)
    assert_stopped(results, batch_status, lambda s: "stopped following; job wait-")
    jobs = {job.submission_id: job.status for job in JobSubmissionClient(head.url).list_jobs()}
    assert all(jobs.get(f"wait-{sig.name}-{way}") == "PENDING" for sig, way, *_ in results), jobs
