"""The HTTP API of `imf serve` without Ray: the ingress's FastAPI app in front of a stand-in for the generator. What
it refuses and how it says so, the OpenAPI document it publishes, and the playground page it serves."""

import json
import re

import numpy as np
import pytest

from pipelines.serve.api import build_api
from pipelines.serve.schema import request_model
from tests.pipelines.serve.asgi import asgi_call
from tests.pipelines.serve.served import png_pixels

pytestmark = pytest.mark.timeout(120)
INFO = {"model_version": "m/3", "num_classes": 4, "class_names": ["a", "b", "c", "d"], "image_size": 8,
        "guidance": {"omega": 2.0, "t_min": 0.1, "t_max": 0.9, "steps": 1},
        "guidance_range": {"omega": [1.0, 8.0], "t_min": [0.0, 0.5], "t_max": [0.5, 1.0]}}


class Backend:
    """The generator's side: image k is filled with its seed's value; `images` records what it was sent."""

    def __init__(self):
        self.sent = []

    async def images(self, rows):
        self.sent.append(rows)
        n = len(rows["seeds"])
        images = np.stack([np.full((2, 2, 3), s % 256, np.uint8) for s in rows["seeds"]])
        return {"images": images, "labels": [0] * n, "seeds": rows["seeds"], "indices": rows["indices"],
                "guidance": {"omega": 2.0}, "model_version": "m/3", "batch_requests": 1, "batch_images": n}

    async def info(self):
        return INFO


@pytest.fixture(scope="module")
def app():
    backend = Backend()
    api = build_api(backend, max_images=16)
    api.backend = backend
    return api


@pytest.mark.parametrize("body,message", [
    ({"class": 9.5}, "class 9.5: a class index (integer >= 0) or a class name"),
    ({"class": [1, True]}, "class true"),
    ({"class": ""}, 'class ""'),
    ({"class": []}, "class lists 0 classes"),
    ({"class": [1, 2, 3], "count": 2}, "class lists 3 classes for 2 image(s)"),
    ({"class": 1, "count": 0}, "count 0: must be an integer >= 1"),
    ({"class": 1, "count": 17}, "17 images is above this server's limit of 16"),
    ({"class": 1, "seeds": list(range(17))}, "17 images is above this server's limit of 16"),
    ({"class": 1, "seeds": []}, "no image"),
    ({"class": 1, "seed": 1, "seeds": [2]}, "not both"),
    ({"class": 1, "seeds": 3}, "seeds must be a list"),
    ({"class": 1, "seeds": None}, "seeds must be a list"),
    ({"class": 1, "indices": [0, -2]}, "indices[1] -2: must be an integer in 0..9223372036854775807"),
    ({"class": 1, "seed": 2**63}, "seed 9223372036854775808"),
    ({"class": 1, "seed": -1}, "seed -1"),
    ({"class": 1, "count": 2, "indices": [0, 1, 2]}, "indices (3) and count (2) disagree"),
    ({"class": 1, "omega": 0.5}, "omega 0.5: must be a number >= 1"),
    ({"class": 1, "omega": "strong"}, 'omega "strong"'),
    ({"class": 1, "omega": True}, "omega true"),
    (b'{"class": 1, "omega": Infinity}', "omega Infinity"),
    ({"class": 1, "t_max": 1.5}, "t_max 1.5: must be a number in [0, 1]"),
    ({"class": 1, "t_min": 0.8, "t_max": 0.2}, "t_min 0.8 is above t_max 0.2"),
    ({"class": 1, "steps": 2.5}, "steps 2.5: must be an integer"),
    ({"class": 1, "count": "2"}, 'count "2": must be an integer'),
    ({"class": 1, "steps": 99}, "steps 99: must be an integer in 1..32"),
    ({"class": 1, "format": "gif"}, "format 'gif': choose one of png, npz, json"),
    ({"class": 1, "omgea": 2, "colour": 1}, "unknown field(s) omgea, colour: the fields are class, count"),
    ({"count": 2}, '"class" is required'),
    ({"count": 0, "omega": 0}, "count 0: must be an integer >= 1; omega 0: must be a number >= 1"),
    (b"{not json", "the body is not JSON"),
    ([1, 2], "the body must be a JSON object"),
    (b"", "the body must be a JSON object"),
])
def test_a_bad_request_gets_a_400_that_names_the_field_and_the_fix(app, body, message):
    status, head, content = asgi_call(app, "POST", "/", body, {"Content-Type": "application/json"})
    assert (status, head["content-type"]) == (400, "application/json"), content
    assert message in json.loads(content)["error"]


def test_a_good_request_reaches_the_generator_whatever_its_content_type(app):
    # curl -d sends application/x-www-form-urlencoded; a browser's fetch of a string, text/plain
    for content_type in ("application/x-www-form-urlencoded", "text/plain", None):
        status, head, content = asgi_call(app, "POST", "/", {"class": "c", "seeds": [5, 9], "omega": 1.5},
                                          {"Content-Type": content_type} if content_type else {})
        assert status == 200 and head["content-type"] == "image/png" and head["x-imf-images"] == "2"
        assert app.backend.sent[-1] == {"classes": ["c", "c"], "seeds": [5, 9], "indices": [0, 1],
                                        "guidance": {"omega": 1.5, "t_min": None, "t_max": None, "steps": None}}
        assert png_pixels(content)[:2, 4:6].tolist() == [[[9] * 3] * 2] * 2  # the second tile: seed 9's


def test_unknown_routes_and_methods_are_refused_in_json(app):
    status, _, content = asgi_call(app, "PUT", "/")
    assert status == 405 and "POST a JSON request" in json.loads(content)["error"]
    status, _, content = asgi_call(app, "GET", "/images")
    assert status == 404 and "/images: no such route" in json.loads(content)["error"]


def test_the_openapi_document_declares_what_the_server_accepts(app):
    status, _, content = asgi_call(app, "GET", "/openapi.json")
    doc = json.loads(content)
    assert status == 200 and doc["openapi"].startswith("3.")
    request, declared = doc["components"]["schemas"]["ImageRequest"], request_model(16).model_json_schema(by_alias=True)
    assert {**request, "properties": {}} == {**declared, "properties": {}}  # the model's own, but for its classes
    assert {k: v for k, v in request["properties"].items() if k != "class"} == \
        {k: v for k, v in declared["properties"].items() if k != "class"}
    one = [{"type": "integer", "minimum": 0, "maximum": 3}, {"type": "string", "enum": ["a", "b", "c", "d"]}]
    assert request["properties"]["class"]["anyOf"] == [*one, {"items": {"anyOf": one}, "maxItems": 16, "minItems": 1,
                                                             "type": "array"}]
    assert request["additionalProperties"] is False and request["required"] == ["class"]
    assert request["not"] == {"required": ["seed", "seeds"]}
    assert request["properties"]["count"]["maximum"] == 16 and request["properties"]["seed"]["maximum"] == 2**63 - 1
    post = doc["paths"]["/"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ImageRequest")
    assert set(post["responses"]) == {"200", "400", "500"}  # FastAPI's 422 is answered as a 400
    assert set(post["responses"]["200"]["content"]) == {"image/png", "application/octet-stream", "application/json"}
    assert set(post["responses"]["200"]["headers"]) == {"X-IMF-Model-Version", "X-IMF-Images",
                                                       "X-IMF-Batch-Requests", "X-IMF-Batch-Images"}
    assert post["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/Refusal")
    assert set(doc["paths"]["/"]["get"]["responses"]["200"]["content"]) == {"application/json", "text/html"}
    assert "ValidationError" not in doc["components"]["schemas"]


def test_a_browser_gets_the_page_and_a_program_the_json_description(app):
    status, head, content = asgi_call(app, "GET", "/", headers={"Accept": "application/json"})
    assert status == 200 and json.loads(content) == {**INFO, "max_images": 16}
    assert json.loads(asgi_call(app, "GET", "/")[2]) == {**INFO, "max_images": 16}  # curl's */*
    accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"  # chromium's
    status, head, content = asgi_call(app, "GET", "/", headers={"Accept": accept}, root_path="/imf")
    page = content.decode()
    assert status == 200 and head["content-type"].startswith("text/html")
    fetched = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert fetched == ["/imf/playground.css", "/imf/openapi.json", "/imf/playground.js"]  # the app's own, no CDN
    for name, media_type in (("playground.js", "text/javascript"), ("playground.css", "text/css")):
        status, head, content = asgi_call(app, "GET", f"/{name}")
        assert status == 200 and head["content-type"].startswith(media_type) and b"http" not in content


def test_under_a_route_prefix_the_prefix_itself_is_the_root(app):
    assert asgi_call(app, "POST", "", {"class": 1}, root_path="/auto")[0] == 200  # not a redirect to /auto/
    assert json.loads(asgi_call(app, "GET", "", root_path="/auto")[2])["max_images"] == 16


def test_a_failure_is_a_500_with_a_json_error_and_no_traceback():
    class Broken:
        async def images(self, rows):
            raise RuntimeError("the replica is gone")

        async def info(self):
            raise ConnectionError("no replica")

    app = build_api(Broken(), max_images=16)
    for method, path, body in (("POST", "/", {"class": 1}), ("GET", "/", b""), ("GET", "/openapi.json", b"")):
        status, head, content = asgi_call(app, method, path, body)
        assert (status, head["content-type"]) == (500, "application/json")
        error = json.loads(content)["error"]
        assert error.startswith("internal error (") and "replica logs" in error and "Traceback" not in error
