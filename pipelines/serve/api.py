"""The HTTP API of `imf serve`: a FastAPI app, the ingress's ASGI app. What it accepts is schema.request_model,
published at /openapi.json; every refusal is JSON {"error": "..."} naming the field and the fix.

    POST /                 the images of a request (schema.py) as png, npz or json (responses.py), X-IMF headers
    GET  /                 the playground page for a browser (Accept: text/html), else the model's description
    GET  /openapi.json     the contract
    GET  /playground.js    the page's script and style, served here: the page fetches nothing from elsewhere
    GET  /playground.css

`backend` answers the two calls that need the model: `await backend.images(rows)` (a request's schema rows() ->
the generator's result, or {"error": why}) and `await backend.info()` (the model's description).
"""

import copy
import html
import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field, TypeAdapter
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, JSONResponse, Response

from .responses import MEDIA_TYPES, encode, headers
from .schema import refusal, request_model

logger = logging.getLogger("ray.serve")
PAGE = Path(__file__).parent / "page"
ASSETS = {"playground.js": "text/javascript", "playground.css": "text/css"}
HEADERS = {"X-IMF-Model-Version": "NAME/VERSION of the registered version that made the images (or the model folder)",
           "X-IMF-Images": "images in the answer",
           "X-IMF-Batch-Requests": "requests whose images were made in the same network call as these",
           "X-IMF-Batch-Images": "images of that network call"}


class Refusal(BaseModel):
    error: str = Field(description="what is wrong and what to change")


class ImageRow(BaseModel):
    class_: int = Field(alias="class")
    seed: int
    index: int
    png: str = Field(description="the image, base64 PNG")


class ImagesAnswer(BaseModel):
    """The answer in format json."""
    model_version: str
    guidance: dict[str, float]
    images: list[ImageRow]
    batch: dict[str, int] = Field(description="requests and images of the network call that made them")


class ModelInfo(BaseModel):
    """GET / with Accept: application/json."""
    model_version: str
    num_classes: int
    class_names: list[str] | None
    guidance: dict[str, float] = Field(description="the guidance a request gets where it gives none")
    guidance_range: dict[str, list[float | None]] = Field(
        description="[low, high] of omega, t_min, t_max the network was trained on (high null: not recorded)")
    image_size: int | None
    max_images: int


IMAGE_RESPONSES = {
    200: {"description": "the images, in the request's format",
          "headers": {name: {"description": text, "required": True, "schema": {"type": "string"}}
                      for name, text in HEADERS.items()},
          "content": {MEDIA_TYPES["png"]: {"schema": {"type": "string", "format": "binary"}},
                      MEDIA_TYPES["npz"]: {"schema": {"type": "string", "format": "binary"}},
                      MEDIA_TYPES["json"]: {"schema": {"$ref": "#/components/schemas/ImagesAnswer"}}}},
    400: {"model": Refusal, "description": "a request this server refuses: the field and the fix"},
    500: {"model": Refusal, "description": "the server failed (its replica logs have the traceback)"}}


def refused(message: str, status: int = 400, extra_headers=None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=extra_headers)


class AsBefore:
    """What `imf serve` accepted before FastAPI: a POST body is JSON whatever its Content-Type (`curl -d` sends a
    form's), and the route prefix itself is the app's / (FastAPI would redirect /prefix to /prefix/)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            if scope["method"] == "POST":
                kept = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                scope = {**scope, "headers": [*kept, (b"content-type", b"application/json")]}
            if scope["path"] == scope.get("root_path", "") != "":
                scope = {**scope, "path": scope["path"] + "/", "raw_path": scope["path"].encode() + b"/"}
        await self.app(scope, receive, send)


class Failures:
    """A failure is a 500 with a one-line JSON error; the traceback goes to the replica's log, not to the client."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        started = False

        async def sending(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as err:
            logger.exception("imf serve: request failed")
            if started or scope["type"] != "http":
                raise
            await refused(f"internal error ({type(err).__name__}); see the ImageIngress and ImageGenerator replica "
                          "logs", 500)(scope, receive, send)


def build_api(backend, max_images: int) -> FastAPI:
    ImageRequest = request_model(max_images)
    api = FastAPI(title="imf serve", version="1", docs_url=None, redoc_url=None, openapi_url=None,
                  description="One-step class-conditional images from an iMF model version (improved MeanFlow).")
    api.add_middleware(Failures)
    api.add_middleware(AsBefore)
    add_refusals(api, max_images)
    page = {name: (PAGE / name).read_text() for name in ("index.html", *ASSETS)}

    @api.post("/", response_class=Response, summary="Make images", responses=IMAGE_RESPONSES)
    async def images(body: ImageRequest) -> Response:
        result = await backend.images(body.rows())
        if "error" in result:
            return refused(result["error"])
        content, media_type = encode(result, body.format)
        return Response(content, media_type=media_type, headers=headers(result))

    @api.get("/", response_model=ModelInfo, summary="The model (JSON), or the playground page for a browser",
             responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}}})
    async def describe(request: Request):
        if "text/html" in request.headers.get("accept", ""):
            root = html.escape(request.scope.get("root_path", "").rstrip("/"), quote=True)
            return HTMLResponse(page["index.html"].replace("{{root}}", root))
        return JSONResponse({**await backend.info(), "max_images": max_images})

    def asset(name: str):
        async def read():
            return Response(page[name], media_type=ASSETS[name])
        return read

    for name in ASSETS:
        api.add_api_route(f"/{name}", asset(name), include_in_schema=False)

    def document() -> dict:
        if api.openapi_schema is None:
            api.openapi_schema = openapi(api, ImageRequest)
        return api.openapi_schema

    api.openapi = document
    served = {}  # the document of each version served so far

    @api.get("/openapi.json", include_in_schema=False)
    async def contract():
        info = await backend.info()
        if info["model_version"] not in served:
            served[info["model_version"]] = with_classes(document(), info)
        return JSONResponse(served[info["model_version"]])

    return api


def add_refusals(api: FastAPI, max_images: int):
    """FastAPI's own refusals (a body that fails the model, an unknown route or method) as JSON {"error"}."""
    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        return refused(refusal(err.errors(), max_images))

    @api.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        message = {404: f"{request.url.path}: no such route; POST / makes images, GET / describes the model (a page "
                        "for a browser), GET /openapi.json is the API",
                   405: f"{request.method} {request.url.path}: POST a JSON request to /, or GET / (the model's "
                        "description)"}.get(err.status_code, str(err.detail))
        return refused(message, err.status_code, getattr(err, "headers", None))


def with_classes(doc: dict, info: dict) -> dict:
    """The document with the classes of the version being served: indices 0..num_classes-1, its names."""
    doc = copy.deepcopy(doc)
    request = doc["components"]["schemas"]["ImageRequest"]
    one = [{"type": "integer", "minimum": 0, "maximum": info["num_classes"] - 1}]
    if info.get("class_names"):
        one.append({"type": "string", "enum": info["class_names"]})
    variants = request["properties"]["class"]["anyOf"]
    variants[:] = [*one, {**variants[-1], "items": {"anyOf": one}}]  # one class, or a list of them
    request["properties"]["class"].update(examples=[info["num_classes"] - 1, *(info.get("class_names") or [])[:1]],
                                          description=f"{request['properties']['class']['description']} (served: "
                                                      f"{info['model_version']})")
    return doc


def openapi(api: FastAPI, request_model) -> dict:
    """FastAPI's document, with the request and answer schemas as pydantic writes them (FastAPI's copy turns
    integer bounds into floats: 2**63 - 1 would read 2**63) and without its 422, which this API answers as a 400."""
    doc = get_openapi(title=api.title, version=api.version, description=api.description, routes=api.routes)
    for response in (op["responses"] for path in doc["paths"].values() for op in path.values()):
        response.pop("422", None)
    schemas = doc["components"]["schemas"]
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for model in (request_model, ImagesAnswer):
        schema = TypeAdapter(model).json_schema(ref_template="#/components/schemas/{model}", by_alias=True)
        schemas.update(schema.pop("$defs", {}), **{model.__name__: schema})
    return doc
