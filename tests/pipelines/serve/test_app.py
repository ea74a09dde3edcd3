"""`imf serve` on the test run's Ray: a real Serve application called over HTTP by concurrent clients. Its images
are the bytes `imf sample` writes, requests are batched across callers, bad requests get a 400 that says why, a
dead replica costs no request, the champion alias is followed without a restart, and autoscaled generators
add a replica under load."""

import base64
import concurrent.futures
import contextlib
import json
import threading
import time

import numpy as np
import pytest

from pipelines import cli
from tests.pipelines.serve.served import CLASSES, GUIDANCE, NAME, call, in_process, npz_images, png_pixels

pytestmark = pytest.mark.timeout(600)


def test_a_request_gives_the_bytes_of_imf_sample(server, sampled):
    images, labels = sampled["arr_0"], sampled["labels"]
    status, head, body = call(server.port, {"class": CLASSES, "seed": 7, "count": 8, "format": "npz"})
    assert status == 200 and head["X-IMF-Model-Version"] == f"{NAME}/1"
    answer = npz_images(body)
    assert np.array_equal(answer["arr_0"], images) and answer["labels"].tolist() == labels.tolist()
    assert answer["indices"].tolist() == list(range(8)) and answer["seeds"].tolist() == [7] * 8

    picked = [6, 1, 3]  # image i of `imf sample --seed 7`, in any order
    status, _, body = call(server.port, {"class": labels[picked].tolist(), "seed": 7, "indices": picked,
                                         "format": "npz"})
    assert status == 200 and np.array_equal(npz_images(body)["arr_0"], images[picked])
    status, _, body = call(server.port, {"class": [int(labels[5]), int(labels[2])], "seeds": [7, 7],
                                         "indices": [5, 2], "format": "npz"})
    assert status == 200 and np.array_equal(npz_images(body)["arr_0"], images[[5, 2]])

    status, head, body = call(server.port, {"class": int(labels[4]), "seed": 7, "indices": [4]})
    assert status == 200 and head["Content-Type"] == "image/png" and np.array_equal(png_pixels(body), images[4])
    status, head, body = call(server.port, {"class": CLASSES, "seed": 7, "count": 4})
    grid = png_pixels(body)  # 2 x 2 grid of 8 x 8 images, 2 pixels apart
    assert grid.shape == (18, 18, 3) and head["X-IMF-Images"] == "4"
    assert np.array_equal(grid[:8, 10:], images[1]) and np.array_equal(grid[10:, :8], images[2])

    status, head, body = call(server.port, {"class": ["c", "a"], "seed": 7, "count": 2, "format": "json"})
    answer = json.loads(body)
    assert status == 200 and answer["model_version"] == f"{NAME}/1" and answer["guidance"] == GUIDANCE
    assert [r["class"] for r in answer["images"]] == [2, 0]
    assert all(np.array_equal(png_pixels(base64.b64decode(r["png"])), images[k])
               for k, r in enumerate(answer["images"]))

    status, _, body = call(server.port, None, method="GET")
    info = json.loads(body)
    assert status == 200 and info["model_version"] == f"{NAME}/1" and info["num_classes"] == 4
    assert info["guidance"] == GUIDANCE and info["max_images"] == 16
    assert info["guidance_range"] == {"omega": [1.0, 8.0], "t_min": [0.0, 0.5], "t_max": [0.5, 1.0]}  # its draws


def concurrent_requests(port, requests, clients=12):
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return list(pool.map(lambda body: call(port, body), requests))


@contextlib.contextmanager
def clients_sending(port, request_of, clients=8, route="/"):
    """`clients` threads that send `request_of(k)` back to back until the block ends; yields their
    (k, answer) list."""
    stop, answers = threading.Event(), []

    def client(k):
        while not stop.is_set():
            answers.append((k, call(port, request_of(k), route=route)))

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client, k) for k in range(clients)]
        try:
            yield answers
        finally:
            stop.set()
            [f.result() for f in futures]


def test_concurrent_clients_are_batched_and_each_gets_its_own_images(server, sampled, store):
    images, labels = sampled["arr_0"], sampled["labels"]
    rng = np.random.default_rng(0)
    requests = []
    for k in range(24):
        picked = rng.choice(8, size=1 + k % 3, replace=False).tolist()
        requests.append({"class": labels[picked].tolist(), "seed": 7, "indices": picked, "format": "npz"})
    requests += [{"class": [1, 3], "seed": 11, "indices": [k, k + 1], "format": "npz"} for k in range(8)]
    answers = concurrent_requests(server.port, requests)
    assert [status for status, _, _ in answers] == [200] * len(requests)
    for request, (_, _, body) in zip(requests[:24], answers):
        assert np.array_equal(npz_images(body)["arr_0"], images[request["indices"]])
    for request, (_, _, body) in zip(requests[24:], answers[24:]):
        expected = in_process(store.folders[0], 11, request["indices"], request["class"])
        assert np.array_equal(npz_images(body)["arr_0"], expected)
    batched = [int(head["X-IMF-Batch-Requests"]) for _, head, _ in answers]
    assert max(batched) > 1, f"no two requests shared a network call: {batched}"
    assert all(int(head["X-IMF-Batch-Images"]) >= len(request["indices"])
               for request, (_, head, _) in zip(requests, answers))


BAD = [
    ({"class": 9}, "outside 0..3"),
    ({"class": "zebra"}, "not a class of this model"),
    ({"class": 1, "count": 17}, "limit of 16"),
    ({"class": 1, "omega": 0.5}, "omega 0.5: must be a number >= 1"),
    ({"class": 1, "omega": "strong"}, "omega"),
    ({"class": 1, "format": "gif"}, "format 'gif'"),
    ({"class": 1, "t_min": 0.8, "t_max": 0.2}, "t_min 0.8 is above t_max 0.2"),
    ({"class": 1, "t_min": 0.95}, "guidance"),  # above the version's stored t_max 0.9
    ({"class": 1, "steps": 0}, "steps 0"),
    ({"class": 1, "seed": -1}, "seed -1"),
    ({"class": 1, "count": 2, "indices": [0, 1, 2]}, "disagree"),
    ({"class": 1, "omgea": 2}, "unknown field(s) omgea"),
    ({"count": 2}, '"class" is required'),
    (b"{not json", "not JSON"),
    ([1, 2], "JSON object"),
]


def test_bad_requests_get_a_400_that_names_the_problem(server):
    for body, message in BAD:
        status, head, content = call(server.port, body)
        assert status == 400, (body, status, content[:300])
        error = json.loads(content)["error"]
        assert message in error and "Traceback" not in error, (body, error)
    status, _, content = call(server.port, b"", method="PUT")
    assert status == 405 and "POST" in json.loads(content)["error"]
    assert call(server.port, {"class": 1})[0] == 200  # the server is fine afterwards


def generator_replicas() -> set[str]:
    import ray

    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "#ImageGenerator#" in a["name"]}


def test_a_dead_replica_is_replaced_without_failing_requests(server, sampled):
    """Clients keep sending while one of the two generator replicas is killed and until its replacement runs."""
    import ray
    from ray import serve

    before = generator_replicas()
    assert len(before) == 2
    images, labels = sampled["arr_0"], sampled["labels"]
    request_of = lambda k: {"class": [int(labels[k])], "seed": 7, "indices": [k], "format": "npz"}  # noqa: E731
    with clients_sending(server.port, request_of) as answers:
        time.sleep(1.0)
        victim = sorted(before)[0]
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        deadline = time.time() + 180
        while time.time() < deadline:
            states = serve.status().applications["imf"].deployments["ImageGenerator"].replica_states
            if states.get("RUNNING") == 2 and len(generator_replicas() - before) == 1:
                break
            time.sleep(0.5)
        time.sleep(1.0)
    assert states.get("RUNNING") == 2 and victim not in generator_replicas(), (states, generator_replicas())
    assert len(generator_replicas() - before) == 1
    failed = [(k, status, body[:200]) for k, (status, _, body) in answers if status != 200]
    assert not failed and len(answers) > 16, failed[:3]
    assert all(np.array_equal(npz_images(body)["arr_0"], images[[k]]) for k, (_, _, body) in answers)


def promote_and_follow(port, store, version: str, request) -> tuple[list, bytes]:
    """Point champion at `version`; the versions that answered `request` until four in a row were it, and the last
    answer."""
    assert cli.main(["models", "--tracking-uri", store.uri, "promote", NAME, version, "--alias", "champion"]) == 0
    deadline, seen, wanted = time.time() + 120, [], f"{NAME}/{version}"
    while time.time() < deadline:
        status, head, body = call(port, request)
        assert status == 200  # answered all along, by one version or the other
        seen.append(head["X-IMF-Model-Version"])
        if seen[-1] == wanted and [call(port, request)[1]["X-IMF-Model-Version"] for _ in range(4)] == [wanted] * 4:
            break
        time.sleep(0.5)
    return seen, body


def test_the_champion_alias_is_followed_without_a_restart(server, store, sampled):
    request = {"class": CLASSES, "seed": 7, "count": 3, "format": "npz", **GUIDANCE}
    status, head, body = call(server.port, request)
    assert status == 200 and head["X-IMF-Model-Version"] == f"{NAME}/1"
    try:
        seen, body = promote_and_follow(server.port, store, "2", request)
        assert seen[-1] == f"{NAME}/2", seen
        expected = in_process(store.folders[1], 7, range(3), CLASSES)
        assert np.array_equal(npz_images(body)["arr_0"], expected)
        assert not np.array_equal(expected, sampled["arr_0"][:3])
    finally:  # the next tests on this server expect version 1
        seen, _ = promote_and_follow(server.port, store, "1", request)
        assert seen[-1] == f"{NAME}/1", seen


def test_autoscaled_generators_add_a_replica_under_load(server, store, sampled):
    """--num-replicas auto: 8 clients keep asking for 16 images each, a request fills a batch, so the ingress keeps
    its four calls out (two per replica of at most two) and they queue at the one replica; Serve starts a second
    (after --upscale-delay-s 2), and every answer is still the right images."""
    from ray import serve

    from pipelines.serve.app import build_app
    from pipelines.serve.server import ServeSpec

    spec = ServeSpec(model=str(store.folders[0]), num_replicas="auto", min_replicas=1, max_replicas=2,
                     cpus_per_replica=0.5, max_batch_size=16, max_images=16, batch_wait_ms=20, upscale_delay_s=2)
    serve.run(build_app(spec), name="imf-auto", route_prefix="/auto")
    deployment = lambda: serve.status().applications["imf-auto"].deployments["ImageGenerator"]  # noqa: E731
    assert deployment().replica_states.get("RUNNING") == 1
    guidance = json.loads(call(server.port, None, method="GET", route="/auto")[2])["guidance"]
    assert guidance != GUIDANCE  # a folder is served with its own guidance, not the version's stored one
    request = {"class": CLASSES, "seed": 7, "count": 16, "format": "npz"}
    expected = in_process(store.folders[0], 7, range(16), [CLASSES[k % 3] for k in range(16)], guidance)
    try:
        with clients_sending(server.port, lambda k: request, route="/auto") as answers:
            deadline = time.time() + 240  # on a busy machine Serve's metrics come late
            while time.time() < deadline and deployment().replica_states.get("RUNNING", 0) < 2:
                time.sleep(1.0)
        assert deployment().replica_states.get("RUNNING", 0) == 2, deployment()
        assert [status for _, (status, _, _) in answers] == [200] * len(answers) and len(answers) > 16
        assert all(np.array_equal(npz_images(body)["arr_0"], expected) for _, (_, _, body) in answers)
    finally:
        serve.delete("imf-auto")
