"""A Ray head (`ray start --head`) and an MLflow server on 127.0.0.1 for one test, torn down by that test.

`ray stop` is never used: it kills every Ray process on the machine by name, including the
test session's own instance and anyone else's. The head runs `--block` in a session of its
own; teardown sends it SIGTERM (it drains and stops what it started), then SIGKILLs whatever
it had started that is still alive.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import ray  # noqa: F401  (puts Ray's bundled psutil on the path)

LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")
# Every port a head opens that has a fixed default: another Ray on this machine may hold the defaults.
PORT_FLAGS = ("--port", "--dashboard-port", "--ray-client-server-port", "--dashboard-agent-listen-port",
              "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port",
              "--node-manager-port", "--object-manager-port")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ready_while_running(proc, ready, timeout: float, every: float) -> bool:
    """Whether `ready()` came true within `timeout` seconds while `proc` still ran."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if ready():
            return True
        time.sleep(every)
    return False


def head_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_TMPDIR")}
    env.update({
        "RAY_AUTH_MODE": "disabled",
        # Ray turns --node-ip-address 127.0.0.1 into the machine's routable address; this keeps every
        # port it opens on the loopback interface (the single-machine mode Ray uses on macOS).
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        # On 2 busy cores the agents take longer than Ray's defaults to come up.
        "RAY_agent_register_timeout_ms": "180000",
        "RAY_worker_register_timeout_seconds": "300",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_prestart_worker_first_driver": "0",
        # The job's `python` must be this interpreter, which has the package installed.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    return env


class LocalHead:
    def __init__(self, num_cpus: int = 4, env: dict | None = None):
        self.num_cpus = num_cpus
        self.extra_env = env or {}
        self.proc = None
        self.temp_dir = None
        self.url = None
        self.gcs = None

    def start(self, attempts: int = 3, timeout: float = 240):
        for _ in range(attempts):
            self._launch()
            if self._wait(timeout):
                return self
            self.stop()
        raise RuntimeError(f"`ray start --head` did not come up in {attempts} attempts; see {self.log}")

    def _launch(self):
        # Ray's socket paths must stay under about 107 characters: a short folder of our own.
        self.temp_dir = tempfile.mkdtemp(prefix="imfh", dir="/tmp")
        ports = {flag: free_port() for flag in PORT_FLAGS}
        self.url = f"http://127.0.0.1:{ports['--dashboard-port']}"
        self.gcs = f"127.0.0.1:{ports['--port']}"
        self.log = Path(self.temp_dir + ".log")
        command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                   "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
                   *[str(x) for item in ports.items() for x in item],
                   "--num-cpus", str(self.num_cpus), "--temp-dir", self.temp_dir, "--disable-usage-stats"]
        env = {**head_env(), "DASHBOARD_METRIC_PORT": str(free_port()), "AUTOSCALER_METRIC_PORT": str(free_port()),
               **self.extra_env}
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def _wait(self, timeout: float) -> bool:
        """True once `ray start` reports the runtime started (the dashboard answers earlier, while the
        raylet may still fail to register) and the Jobs API answers."""
        from ray.job_submission import JobSubmissionClient

        def ready() -> bool:
            if "Ray runtime started" not in self.log.read_text(errors="replace"):
                return False
            try:
                JobSubmissionClient(self.url)
                return True
            except ConnectionError:
                return False

        return ready_while_running(self.proc, ready, timeout, every=2)

    def processes(self) -> list:
        """The head and everything it started (its workers and job drivers sit in other process groups)."""
        try:
            head = psutil.Process(self.proc.pid)
            return [head, *head.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def listening(self) -> list[tuple[str, int, str]]:
        """(address, port, process name) of every TCP socket that the head's processes listen on."""
        pids = {p.pid: p for p in self.processes()}
        return [(c.laddr.ip, c.laddr.port, pids[c.pid].name()) for c in psutil.net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN and c.pid in pids]

    def stop(self, grace: float = 45) -> list:
        """Stop the head and everything it started; returns what survived (nothing, unless teardown failed)."""
        if self.proc is None:
            return []
        started = self.processes()
        alive = self.proc.poll() is None
        if alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        for p in started:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # forkservers the dashboard leaves behind
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(timeout=30)
        self.proc = None
        _, survivors = psutil.wait_procs(started, timeout=10)
        if alive:  # a head that died on its own keeps its logs for a look
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.log.unlink(missing_ok=True)
        return survivors


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with a SQLite store and proxied artifacts under `folder`."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self, timeout: float = 300):
        self.folder.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                   "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
                   "--artifacts-destination", str(self.folder / "artifacts"), "--workers", "1"]
        # Job execution (GenAI features) would add seven worker processes that this test does not need.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.folder / "server.log", "w") as log:
            self.proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        if ready_while_running(self.proc, self._healthy, timeout, every=1):
            return self
        self.stop()
        raise RuntimeError(f"mlflow server did not answer within {timeout:.0f} s; see {self.folder / 'server.log'}")

    def _healthy(self) -> bool:
        try:
            urllib.request.urlopen(f"{self.url}/health", timeout=5)
            return True
        except OSError:
            return False

    def stop(self):
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 30)):
            try:
                os.killpg(self.proc.pid, sig)  # the server's uvicorn workers share its group
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self.proc = None


# A second node's own ports (the GCS, dashboard and client ports are the head's).
NODE_PORT_FLAGS = ("--node-manager-port", "--object-manager-port", "--metrics-export-port",
                   "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port")


class LocalNode:
    """A second node on this machine (`ray start --address HEAD`) with CPUs and resources of its own; `kill()`
    SIGKILLs all of its processes at once, as when a machine is lost."""

    def __init__(self, head: LocalHead, num_cpus: int = 2, resources: dict | None = None):
        self.head, self.num_cpus, self.resources = head, num_cpus, resources or {"node2": 1}
        self.proc = None
        self.log = Path(head.temp_dir + ".node.log")

    def start(self, attempts: int = 3, timeout: float = 240):
        # `ray start` gives a node 30 s (fixed in Ray) to register with the GCS; on busy cores that can fail.
        self.log.write_text("")  # the attempts of this start, appended
        for _ in range(attempts):
            if self._launch(timeout):
                return self
        raise RuntimeError(f"the second node did not come up in {attempts} attempts; see {self.log}")

    def _launch(self, timeout: float) -> bool:
        import json

        ports = [str(x) for flag in NODE_PORT_FLAGS for x in (flag, free_port())]
        command = [str(Path(sys.executable).parent / "ray"), "start", "--address", self.head.gcs, "--block",
                   "--node-ip-address", "127.0.0.1", *ports, "--num-cpus", str(self.num_cpus),
                   "--resources", json.dumps(self.resources), "--disable-usage-stats"]
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(command, env={**head_env(), **self.head.extra_env}, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        if ready_while_running(self.proc, lambda: "Ray runtime started" in self.log.read_text(errors="replace"),
                               timeout, every=1):
            return True
        self.kill()
        return False

    def processes(self) -> list:
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except (psutil.NoSuchProcess, AttributeError):
            return []

    def kill(self) -> int:
        """SIGKILL every process of the node; returns how many there were."""
        procs = self.processes()
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait(timeout=30)
        psutil.wait_procs(procs, timeout=10)
        return len(procs)
