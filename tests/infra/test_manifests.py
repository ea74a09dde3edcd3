"""The Ray cluster launcher config, the KubeRay manifests, and every `imf` command they or the documentation show
(README.md and docs/, the cluster commands that the tests cannot run too): parsed by the real CLI parser, with the
repository files they name."""

import pytest

from tests.infra.infra_files import (
    INFRA,
    documented_commands,
    imf_argv,
    locked_version,
    parse_error,
    project_version,
    rayjobs,
    repo_file_problems,
    yaml_docs,
)

STEPS = ("encode", "train", "tune", "register", "sample", "evaluate")
IMAGE = f"REGISTRY/imf:{project_version()}"
RAY_VERSION = locked_version("ray")


def commands():
    found = []
    for name, docs in rayjobs().items():
        found += [(f"{name}:{doc['metadata']['name']}", doc["spec"]["entrypoint"]) for doc in docs]
    return found + documented_commands()


def raycluster():
    docs = {doc["kind"]: doc for doc in yaml_docs(INFRA / "k8s" / "raycluster.yaml")}
    return docs["RayCluster"], docs


def pod_templates(cluster):
    return [cluster["spec"]["headGroupSpec"]["template"]] + [g["template"] for g in cluster["spec"]["workerGroupSpecs"]]


def test_every_step_has_a_rayjob_and_the_cluster_page_submits_all_six():
    assert sorted(rayjobs()) == sorted(f"rayjob-{s}.yaml" for s in STEPS)
    submitted = {parse_step(argv) for page, c in documented_commands()
                 if page == "docs/cluster.md" and (argv := imf_argv(c)) and argv[0] == "submit"}
    assert {"encode", "train", "tune", "models", "sample", "evaluate"} <= submitted


def parse_step(argv):
    from pipelines.cli import build_parser

    return build_parser().parse_args(argv).step


COMMANDS = commands()


@pytest.mark.parametrize("where,command", COMMANDS, ids=[f"{w} {' '.join(imf_argv(c)[:2])}" for w, c in COMMANDS])
def test_command_exists_in_the_cli(where, command):
    argv = imf_argv(command)
    assert argv is not None, f"{where}: {command!r} does not run imf"
    error = parse_error(argv)
    assert error is None, f"{where}: `imf {' '.join(argv)}` is refused by the CLI: {error}"
    assert not repo_file_problems(argv), f"{where}: {repo_file_problems(argv)}"


def test_rayjobs_run_on_the_raycluster_with_its_token():
    cluster, _ = raycluster()
    names = []
    for file, docs in rayjobs().items():
        for job in docs:
            assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob"), file
            assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}, file
            submitter = job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
            assert submitter["image"] == IMAGE, file
            assert token_env(submitter), f"{file}: the submitter has no Ray token"
            names.append(job["metadata"]["name"])
    assert len(names) == len(set(names)), f"RayJob names repeat: {names}"


def token_env(container) -> bool:
    env = {e["name"]: e for e in container.get("env", [])}
    return (env.get("RAY_AUTH_MODE", {}).get("value") == "token"
            and "secretKeyRef" in env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}))


def test_raycluster_autoscales_gpu_workers_in_the_imf_image():
    cluster, docs = raycluster()
    spec = cluster["spec"]
    assert spec["rayVersion"] == RAY_VERSION and spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"  # no public Jobs port
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpu_groups and all(g["minReplicas"] < g["maxReplicas"] for g in gpu_groups)
    claims = {docs["PersistentVolumeClaim"]["metadata"]["name"]}
    for template in pod_templates(cluster):
        container = template["spec"]["containers"][0]
        assert container["image"] == IMAGE and token_env(container)
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert {volumes[m["name"]]["persistentVolumeClaim"]["claimName"] for m in container["volumeMounts"]
                if m["mountPath"] == "/data"} == claims


def test_cluster_launcher_config():
    config = yaml_docs(INFRA / "ray" / "cluster.yaml")[0]
    types = config["available_node_types"]
    assert config["head_node_type"] in types and config["provider"]["type"] == "aws"
    gpu = [t for t in types.values() if t.get("resources", {}).get("GPU", 0) > 0]
    assert gpu and all(t["min_workers"] < t["max_workers"] <= config["max_workers"] for t in gpu)
    assert config["docker"]["image"] == IMAGE
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start  # the Jobs API is reached through `ray dashboard`
    assert all("RAY_AUTH_MODE=token ray start" in " ".join(config[k])
               for k in ("head_start_ray_commands", "worker_start_ray_commands"))
    ingress = config["provider"]["security_group"]["IpPermissions"]
    assert [(p["FromPort"], p["ToPort"]) for p in ingress] == [(22, 22)]
    assert any("pip install" in c and "-e" in c for c in config["head_setup_commands"])
