"""The container image and the MLflow server definition: they parse, their versions agree with
pyproject.toml and the Makefile, nothing listens beyond localhost unless asked, and no password is
written down. (No Docker engine here: nothing is built.)"""

import configparser
import re
import subprocess

import pytest
from packaging.requirements import Requirement

from tests.infra.infra_files import INFRA, REPO, docker_args, dockerfile, requirement, yaml_docs

IMAGE = INFRA / "docker" / "Dockerfile"
MLFLOW = INFRA / "mlflow"


def makefile_pin(package: str) -> str:
    found = re.findall(rf"(?<![\w-]){package}==([0-9][0-9A-Za-z.+]*)", (REPO / "Makefile").read_text())
    assert len(set(found)) == 1, f"the Makefile pins {package} {len(set(found))} ways: {found}"
    return found[0]


def test_image_versions_agree_with_pyproject_and_the_makefile():
    args = docker_args(IMAGE)
    for package, arg in (("torch", "TORCH_VERSION"), ("ray", "RAY_VERSION"), ("mlflow", "MLFLOW_VERSION")):
        assert requirement(package).specifier.contains(args[arg]), f"{arg}={args[arg]} is outside pyproject's {requirement(package)}"
    assert requirement("python").specifier.contains(f"{args['PYTHON']}.0")
    assert args["TORCH_VERSION"] == makefile_pin("torch")  # the CUDA build of the CPU build's version
    assert args["TORCH_FIDELITY_VERSION"] == makefile_pin("torch-fidelity")
    assert docker_args(MLFLOW / "Dockerfile")["MLFLOW_VERSION"] == args["MLFLOW_VERSION"]


def test_image_installs_the_package_with_pyprojects_ray_extras():
    steps = dockerfile(IMAGE)
    assert steps[0][0] == "FROM" and steps[0][1].startswith("nvidia/cuda:")
    runs = [a for i, a in steps if i == "RUN"]
    fidelity = [r for r in runs if "torch-fidelity==" in r]
    assert fidelity and all("--no-deps" in r for r in fidelity)  # its torchvision would replace our torch
    ray_extras = set(requirement("ray").extras)
    pins = [Requirement(m.replace("${RAY_VERSION}", "0")) for r in runs for m in re.findall(r'"(ray\[[^"]+)"', r)]
    assert pins and all(p.extras == ray_extras for p in pins)
    assert any(re.search(r"pip install .* -e \.$", r) for r in runs)  # the package itself, last
    for instruction, arguments in steps:
        if instruction == "COPY":
            sources = [a for a in arguments.split()[:-1] if not a.startswith("--")]
            assert all((REPO / s).exists() for s in sources), f"COPY {arguments}: a source is missing"
    assert [a for i, a in steps if i == "USER"][-1] not in ("root", "0")


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
