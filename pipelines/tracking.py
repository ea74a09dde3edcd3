"""MLflow helpers: a local store by default, explicit experiment ids, and logging that
turns a vanished tracking server into warnings instead of a failed run."""

import contextlib
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from .errors import UserError, host_port, probe_tcp


def default_tracking_uri(root="mlruns") -> str:
    """A local SQLite store under ./mlruns (artifacts beside it)."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def absolute_store(uri: str) -> str:
    """A relative SQLite URI (`sqlite:///runs/mlflow.db`, read from the working folder) made absolute: the
    artifacts beside it need an absolute file URI, and Ray workers run in folders of their own."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def artifact_root(tracking_uri: str) -> str | None:
    """Where a local store keeps artifacts (None: let the server decide)."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    return None


def experiment_id(client, name: str, tracking_uri: str) -> str:
    """Get or create `name`, with an explicit artifact location for local stores."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    root = artifact_root(tracking_uri)
    location = f"{root}/{name.replace('/', '_')}" if root else None
    return client.create_experiment(name, artifact_location=location)


@contextlib.contextmanager
def http_limits(retries: int, timeout_s: int):
    """MLflow's HTTP retries and timeout around some calls, restored after (MLflow reads them per request): a dead
    server is found out in seconds, not after its default back-off of minutes. The one place they are set."""
    keys = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries), "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s),
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def probe_server(uri: str):
    """A TCP probe of an http(s) tracking server before any MLflow call (its client retries for minutes)."""
    if uri.startswith(("http://", "https://")):
        target = host_port(uri, 443 if uri.startswith("https") else 80)
        if target:
            probe_tcp(*target, what=f"the MLflow tracking server {uri}",
                      fix="Start it (e.g. `mlflow server --host 127.0.0.1`), check --tracking-uri, or drop it for "
                          "the local store under ./mlruns.")


def connect(tracking_uri: str | None):
    """An MlflowClient for the URI (default: the local store), tracking and registry both; an unreachable
    server is a UserError within seconds."""
    # A progress bar per artifact download floods logs that are not a terminal; a new SQLite store announces
    # its schema migration in INFO lines.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true" if sys.stderr.isatty() else "false")
    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    uri = absolute_store(tracking_uri or default_tracking_uri())
    probe_server(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        with http_limits(retries=1, timeout_s=4):
            client.search_experiments(max_results=1)
    except Exception as err:  # noqa: BLE001 - any failure here means the store is unusable
        raise UserError(f"cannot reach the MLflow tracking store {uri!r} ({err.__class__.__name__}: "
                        f"{str(err)[:200]}). Start it (e.g. `mlflow server --host 127.0.0.1`) or pass "
                        "--tracking-uri sqlite:////abs/path/mlflow.db") from err
    return client, uri


def param_value(value) -> str:
    return json.dumps(value) if isinstance(value, (dict, list, tuple)) else str(value)


def log_params(client, run_id, params: dict):
    from mlflow.entities import Param

    client.log_batch(run_id, params=[Param(k, param_value(v)) for k, v in params.items()])


class TolerantLogger:
    """Logs to one MLflow run; on a failing server, warns (once per kind) and carries on."""

    def __init__(self, tracking_uri: str, run_id: str):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.run_id = run_id
        self.failures = 0
        # Fail fast on a vanished server: a training step waits for each call.
        self.limits = dict(retries=int(os.environ.get("IMF_MLFLOW_RETRIES", "1")),
                           timeout_s=int(os.environ.get("IMF_MLFLOW_TIMEOUT", "10")))

    def _guard(self, what, fn, *args, **kwargs):
        try:
            with http_limits(**self.limits):
                return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - tracking must never stop training
            self.failures += 1
            if self.failures <= 3 or self.failures % 100 == 0:
                warnings.warn(f"MLflow {what} failed ({err.__class__.__name__}: {str(err)[:160]}); "
                              f"training continues ({self.failures} failures so far)", stacklevel=3)
            return None

    def params(self, values: dict):
        self._guard("log params", log_params, self.client, self.run_id, values)

    def metrics(self, values: dict, step: int):
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in values.items()]
        self._guard("log metrics", self.client.log_batch, self.run_id, metrics=batch)

    def table(self, rows: list[dict], artifact_file: str):
        columns = {k: [r.get(k) for r in rows] for k in rows[0]} if rows else {}
        self._guard("log table", self.client.log_table, self.run_id, data=columns, artifact_file=artifact_file)

    def artifact(self, path, artifact_path=None):
        self._guard("log artifact", self.client.log_artifact, self.run_id, str(path), artifact_path)

    def dict(self, data: dict, artifact_file: str):
        self._guard("log dict", self.client.log_dict, self.run_id, data, artifact_file)

    def tag(self, key, value):
        self._guard("set tag", self.client.set_tag, self.run_id, key, str(value))

    def terminate(self, status: str):
        self._guard("end run", self.client.set_terminated, self.run_id, status=status)
