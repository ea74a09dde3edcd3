"""One registered model and one `imf serve` application for the Serve tests of a file, or of consecutive files
(package scope: torn down before other tests run, so its replicas hold no CPUs of the session's Ray)."""

from types import SimpleNamespace

import pytest

from tests.infra.local_cluster import free_port
from tests.pipelines.model_helpers import model_folder
from tests.pipelines.serve.served import CLASSES, GUIDANCE, NAME, sample


@pytest.fixture(scope="package")
def store(tmp_path_factory):
    """Versions 1 (champion, with stored guidance GUIDANCE) and 2 of NAME in a fresh SQLite store."""
    from pipelines.models.registry import register_folder, set_best_guidance
    from pipelines.tracking import connect

    tmp = tmp_path_factory.mktemp("serve")
    uri = f"sqlite:///{tmp}/mlflow.db"
    folders = [model_folder(tmp, seed=s) for s in (0, 1)]
    for folder in folders:
        register_folder(folder, NAME, uri)
    client, _ = connect(uri)
    set_best_guidance(client, NAME, "1", GUIDANCE, "fd_test", 1.0)
    return SimpleNamespace(tmp=tmp, uri=uri, folders=folders)


@pytest.fixture(scope="package")
def sampled(store, ray_session):
    """`imf sample --seed 7` of version 1: the bytes the server must give."""
    return sample(store, store.tmp / "sampled", 7, CLASSES, 8, **GUIDANCE)


@pytest.fixture(scope="package")
def server(store, ray_session):
    """`imf serve --model models:/NAME@champion` with two generator replicas; a test that moves the alias moves it
    back."""
    from ray import serve

    from pipelines.serve.server import ServeSpec, start_app

    spec = ServeSpec(model=f"models:/{NAME}@champion", tracking_uri=store.uri, port=free_port(), num_replicas="2",
                     cpus_per_replica=0.5, max_batch_size=32, max_images=16, batch_wait_ms=20, poll_seconds=1)
    url, label = start_app(spec)
    assert label == f"{NAME}/1" and url == f"http://127.0.0.1:{spec.port}/"
    yield SimpleNamespace(port=spec.port, url=url)
    serve.shutdown()
