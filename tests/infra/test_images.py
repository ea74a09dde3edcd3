"""The container image and the MLflow server definition: they parse, their versions agree with
pyproject.toml and the Makefile, nothing listens beyond localhost unless asked, and no password is
written down. (No Docker engine here: nothing is built.)"""

import configparser
import re
import subprocess

import pytest
from packaging.requirements import Requirement

from tests.infra.infra_files import INFRA, REPO, docker_args, dockerfile, locked_version, requirement, yaml_docs

IMAGE = INFRA / "docker" / "Dockerfile"
MLFLOW = INFRA / "mlflow"


def test_image_installs_the_locked_versions_and_the_package_with_pyprojects_ray_extras():
    steps = dockerfile(IMAGE)
    assert steps[0][0] == "FROM" and steps[0][1].startswith("nvidia/cuda:")
    assert requirement("python").specifier.contains(f"{docker_args(IMAGE)['PYTHON']}.0")
    runs = [a for i, a in steps if i == "RUN"]
    installs = [c for r in runs for c in r.split("&&") if "pip install" in c]
    assert installs and all("-c constraints.txt" in c for c in installs)  # the lock, every time
    assert not re.search(r"==\$\{?\w+VERSION", " ".join(runs))  # no version besides the lock's
    fidelity = [c for c in installs if "torch-fidelity" in c]
    assert fidelity and all("--no-deps" in c for c in fidelity)  # its torchvision would replace our torch
    ray_extras = set(requirement("ray").extras)
    pins = [Requirement(m) for r in runs for m in re.findall(r'"(ray\[[^"]+)"', r)]
    assert pins and all(p.extras == ray_extras for p in pins)
    assert re.search(r"pip install .* -e \.$", runs[-1])  # the package itself, last
    for instruction, arguments in steps:
        if instruction == "COPY":
            sources = [a for a in arguments.split()[:-1] if not a.startswith("--")]
            assert all((REPO / s).exists() for s in sources), f"COPY {arguments}: a source is missing"
    assert [a for i, a in steps if i == "USER"][-1] not in ("root", "0")
    # the tracking server runs the clients' MLflow
    assert docker_args(MLFLOW / "Dockerfile")["MLFLOW_VERSION"] == locked_version("mlflow")


def compose():
    return yaml_docs(MLFLOW / "docker-compose.yaml")[0]


def test_mlflow_server_has_postgres_and_object_store_artifacts():
    services = compose()["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["minio"]["image"].startswith("minio/minio:RELEASE.")
    env = services["mlflow"]["environment"]
    assert env["MLFLOW_ARTIFACTS_DESTINATION"].split(":-")[1].startswith("s3://")
    entrypoint = (MLFLOW / "entrypoint.sh").read_text()
    assert "postgresql+psycopg2://" in entrypoint and "--app-name basic-auth" in entrypoint
    auth = configparser.ConfigParser()
    auth.read(MLFLOW / "basic_auth.ini")
    assert "admin_password" not in auth["mlflow"]  # it comes from the mlflow_admin_password secret


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_mlflow_entrypoint_parses(shell):
    result = subprocess.run([shell, "-n", str(MLFLOW / "entrypoint.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    python = (MLFLOW / "entrypoint.sh").read_text().split("<<'PY'\n", 1)[1].split("\nPY\n", 1)[0]
    compile(python, "entrypoint.sh (bucket creation)", "exec")


def test_mlflow_server_publishes_only_on_localhost_and_writes_no_password():
    services = compose()["services"]
    published = [(name, p) for name, s in services.items() for p in s.get("ports", [])]
    assert published == [("mlflow", "${MLFLOW_BIND:-127.0.0.1}:${MLFLOW_PORT:-5000}:5000")]
    declared = compose()["secrets"]
    for name, service in services.items():
        for key, value in service.get("environment", {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", key):
                assert key.endswith("_FILE") and value.removeprefix("/run/secrets/") in service["secrets"], \
                    f"{name}: {key} must come from a Docker secret"
        assert set(service.get("secrets", [])) <= set(declared)
    assert all(set(spec) == {"file"} and spec["file"].startswith("./secrets/") for spec in declared.values())
    assert "secrets/" in (MLFLOW / ".gitignore").read_text().split()
