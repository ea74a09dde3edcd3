"""The RayService of `imf serve` (infra/k8s/rayservice.yaml): it runs pipelines/serve's own application builder
with args it accepts, on a cluster in the imf image with the Ray token, GPU replicas that can scale, and no
public exposure (ClusterIP Services only, anywhere in infra/k8s)."""

from importlib import import_module

import yaml

from tests.infra.infra_files import INFRA, yaml_docs
from tests.infra.test_manifests import IMAGE, RAY_VERSION, pod_templates, rayjobs, token_env

SERVICE = INFRA / "k8s" / "rayservice.yaml"


def rayservice():
    docs = yaml_docs(SERVICE)
    assert [(d["apiVersion"], d["kind"]) for d in docs] == [("ray.io/v1", "RayService")]
    return docs[0]


def serve_config():
    return yaml.safe_load(rayservice()["spec"]["serveConfigV2"])


def test_the_application_is_imf_serves_builder_with_args_it_accepts():
    from pipelines.serve.spec import AppSpec
    from pipelines.serve.versions import follows

    (app,) = serve_config()["applications"]
    module, _, name = app["import_path"].partition(":")
    assert (module, name) == ("pipelines.serve.app", "app_builder") and callable(getattr(import_module(module), name))
    spec = AppSpec(**app["args"])  # the builder's own spec: an unknown arg fails here
    spec.check()
    assert follows(spec.model) and spec.model.endswith("@champion")
    tracking = {e.split("--tracking-uri ")[1].split()[0] for docs in rayjobs().values() for e in
                (d["spec"]["entrypoint"] for d in docs) if "--tracking-uri" in e}
    assert tracking == {spec.tracking_uri}  # the store the jobs register into
    assert spec.gpus_per_replica == 1 and spec.num_replicas == "auto"


def test_replicas_fit_the_gpu_workers_and_run_the_imf_image_with_its_token():
    cluster = rayservice()["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == RAY_VERSION and cluster["enableInTreeAutoscaling"] is True
    args = serve_config()["applications"][0]["args"]
    gpu_groups = [g for g in cluster["workerGroupSpecs"]
                  if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    gpus = sum(g["maxReplicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
               for g in gpu_groups)
    assert gpu_groups and all(g["minReplicas"] < g["maxReplicas"] for g in gpu_groups)
    assert args["min_replicas"] < args["max_replicas"] <= gpus
    from pipelines.runtime import SERVE_FAST_PATH

    for template in pod_templates({"spec": cluster}):
        container = template["spec"]["containers"][0]
        assert container["image"] == IMAGE and token_env(container)
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert {k: env.get(k) for k in SERVE_FAST_PATH} == SERVE_FAST_PATH  # the request path of a local instance


def test_nothing_in_k8s_is_exposed_outside_the_cluster():
    spec = rayservice()["spec"]
    assert spec["serveService"]["spec"]["type"] == "ClusterIP"
    assert spec["rayClusterConfig"]["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    port = serve_config()["http_options"]["port"]
    assert [p["port"] for p in spec["serveService"]["spec"]["ports"]] == [port]
    for path in sorted((INFRA / "k8s").glob("*.yaml")):
        for doc in yaml_docs(path):
            assert doc["kind"] != "Ingress", f"{path.name}: an Ingress exposes the cluster"
            for found in service_types(doc):
                assert found == "ClusterIP", f"{path.name}: a {found} Service is reachable from outside"


def service_types(node):
    """Every Service type and serviceType named anywhere in a manifest."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("serviceType",) or (key == "type" and value in ("ClusterIP", "NodePort", "LoadBalancer",
                                                                         "ExternalName")):
                yield value
            yield from service_types(value)
    elif isinstance(node, list):
        for item in node:
            yield from service_types(item)
