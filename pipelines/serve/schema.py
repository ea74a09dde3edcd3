"""The request a client POSTs to `imf serve`, declared as a pydantic model: FastAPI checks bodies against it and
publishes it in /openapi.json, and `refusal` turns what it finds wrong into one sentence naming the field and
the fix (an HTTP 400, never a traceback).

    POST {"class": 3, "count": 4, "seed": 0, "omega": 2.0, "format": "png"}

Image k of a request (k = 0 .. n-1) is image (seed, index) with class c, where
    seed  = seeds[k] when "seeds" is given, else "seed" (default 0)
    index = indices[k] when "indices" is given, else k
    c     = class[k % len(class)]: "class" is one class or a list cycled over the images (indices or names)
and n is "count" (default 1) or the length of "seeds" / "indices" (those given must agree). So
{"seed": S, "count": N, "class": [2, 0, 3]} is images 0 .. N-1 of `imf sample --seed S --num N --classes 2,0,3`
byte for byte, and {"seed": S, "indices": [i, j], "class": [a, b]} is its images i and j, as are the pyfunc's
rows (class, seed, index). omega, t_min, t_max, steps default to the served version's stored guidance.
"format": png (one image, or a grid of n), npz (arr_0 uint8 (n, H, W, 3) as `imf sample` writes it, with
labels, seeds, indices), json (base64 PNGs with their class, seed and index).
"""

import json
from functools import cache
from typing import Annotated, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

FORMATS = ("png", "npz", "json")
FIELDS = ("class", "count", "seed", "seeds", "indices", "omega", "t_min", "t_max", "steps", "format")
MAX_STEPS = 32
MAX_SEED = 2**63 - 1
EXAMPLE = '{"class": 3, "count": 4, "seed": 0}'
# What a field accepts, as a refusal says it ("omega 0.5: must be a number >= 1 (1: no guidance)").
ACCEPTS = {"count": "an integer >= 1", "seed": f"an integer in 0..{MAX_SEED}", "seeds": f"an integer in 0..{MAX_SEED}",
           "indices": f"an integer in 0..{MAX_SEED}", "omega": "a number >= 1 (1: no guidance)",
           "t_min": "a number in [0, 1]", "t_max": "a number in [0, 1]", "steps": f"an integer in 1..{MAX_STEPS}"}
# The rules JSON Schema cannot say; the replica checks the served version's classes and stored guidance.
RULES = ('Give "seed" or "seeds", not both; count, seeds and indices, where given, agree on the number of images; '
         "class lists at most one class per image; t_min <= t_max. The class indices and names, and the guidance "
         "where not given, are the served version's (GET / describes it).")



def _integral(value):
    # JSON Schema's integer is a number with no fraction: 13.0 is 13, as any client generated from the document
    # may send it (13.5, "13" and true stay refused).
    return int(value) if isinstance(value, float) and value.is_integer() else value


def integer(**bounds):
    return Annotated[int, Field(**bounds), BeforeValidator(_integral)]  # bounds first: the schema shows them


Seed = integer(ge=0, le=MAX_SEED)
ClassId = Union[integer(ge=0), Annotated[str, Field(min_length=1)]]
Unit = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


def _no_default(schema: dict):
    schema.pop("default", None)  # "not given" is not a value a client can send


@cache
def request_model(max_images: int) -> type[BaseModel]:
    """The request of a server that makes at most `max_images` images per request."""
    per_request = {"min_length": 1, "max_length": max_images, "json_schema_extra": _no_default}

    class ImageRequest(BaseModel):
        __doc__ = f"Images to make: image k is image (seed, index) of class c, as `imf sample` makes it. {RULES}"
        model_config = ConfigDict(extra="forbid", strict=True, title="ImageRequest",
                                  json_schema_extra={"not": {"required": ["seed", "seeds"]}})
        classes: Union[ClassId, Annotated[list[ClassId], Field(min_length=1, max_length=max_images)]] = Field(
            alias="class", description="a class index or name, or a list of them cycled over the images",
            examples=[3, "golden retriever", [2, 0, 3]])
        count: integer(ge=1, le=max_images) = Field(1, description="images, when neither seeds nor indices is given")
        seed: Seed = Field(0, description="the seed of every image (or seeds: one per image)")
        seeds: list[Seed] = Field(None, description="one seed per image", **per_request)
        indices: list[Seed] = Field(None, description="the index of each image (default 0 .. n-1)", **per_request)
        omega: float | None = Field(None, ge=1, allow_inf_nan=False,
                                    description="guidance scale (1: none); default the version's stored one")
        t_min: Unit | None = Field(None, description="where guidance starts; default the version's stored one")
        t_max: Unit | None = Field(None, description="where guidance ends; default the version's stored one")
        steps: integer(ge=1, le=MAX_STEPS) | None = Field(None, description="network evaluations per image")
        format: Literal[FORMATS] = Field("png", description="png (one image, or a grid), npz (arr_0 uint8 "
                                                            "(n, H, W, 3) with labels, seeds, indices), json")

        @model_validator(mode="after")
        def _agree(self):
            given = self.model_fields_set
            if "seed" in given and self.seeds is not None:
                raise ValueError('give "seed" (one for the request) or "seeds" (one per image), not both')
            sizes = {name: len(getattr(self, name)) for name in ("seeds", "indices") if getattr(self, name) is not None}
            if "count" in given:
                sizes["count"] = self.count
            if len(set(sizes.values())) > 1:
                raise ValueError(f"{' and '.join(f'{k} ({v})' for k, v in sizes.items())} disagree on the number "
                                 "of images: give one of them, or make them agree")
            n = self.n
            if isinstance(self.classes, list) and len(self.classes) > n:
                raise ValueError(f"class lists {len(self.classes)} classes for {n} image(s): give one class, one "
                                 "per image, or fewer classes (cycled over the images)")
            if None not in (self.t_min, self.t_max) and self.t_min > self.t_max:
                raise ValueError(f"t_min {self.t_min} is above t_max {self.t_max}")
            return self

        @property
        def n(self) -> int:
            return len(self.seeds or self.indices or []) or self.count

        def rows(self) -> dict:
            """What the generator replica is sent: one class, seed and index per image, the guidance as given."""
            n, given = self.n, self.classes if isinstance(self.classes, list) else [self.classes]
            return {"classes": [given[k % len(given)] for k in range(n)], "seeds": self.seeds or [self.seed] * n,
                    "indices": self.indices or list(range(n)),
                    "guidance": {k: getattr(self, k) for k in ("omega", "t_min", "t_max", "steps")}}

    return ImageRequest


def refusal(errors: list[dict], max_images: int) -> str:
    """One sentence for the validation errors of a request body (FastAPI's, locations under "body")."""
    unknown = [e["loc"][-1] for e in errors if e["type"] == "extra_forbidden"]
    said, by_field = [], {}
    if unknown:
        said.append(f"unknown field(s) {', '.join(map(str, unknown))}: the fields are {', '.join(FIELDS)}")
    for error in errors:
        loc = tuple(error["loc"][1:]) if error["loc"][:1] == ("body",) else tuple(error["loc"])
        if error["type"] != "extra_forbidden":
            by_field.setdefault(loc[0] if loc and isinstance(loc[0], str) else "", []).append((loc, error))
    for field, found in by_field.items():
        said.append(_field_refusal(field, found, max_images))
    return "; ".join(said)


def _field_refusal(field: str, found: list, max_images: int) -> str:
    loc, error = max(found, key=lambda f: len(f[0]))  # the deepest: a list item rather than the list
    kind, value = error["type"], error.get("input")
    if field == "":
        if kind == "json_invalid":
            return f"the body is not JSON ({error.get('ctx', {}).get('error', 'unreadable')}); send an object such " \
                   f"as {EXAMPLE}"
        if kind == "value_error":
            return error["msg"].removeprefix("Value error, ")
        return f"the body must be a JSON object such as {EXAMPLE}"
    if kind == "missing":
        return f'"{field}" is required (a class index or name, or a list of them), e.g. {EXAMPLE}'
    if field == "class":
        sized = [e["input"] for _, e in found if e["type"] in ("too_short", "too_long")]
        if sized:
            return (f"class lists {len(sized[0])} classes: give one class, one per image (at most {max_images}), or "
                    "fewer classes (cycled over the images)")
        return f"class {_shown(value)}: a class index (integer >= 0) or a class name"
    if field in ("seeds", "indices") and kind == "list_type":
        return f"{field} must be a list of integers >= 0, got {_shown(value)}"
    if field in ("seeds", "indices") and kind == "too_short":
        return "the request asks for no image: give count >= 1 or non-empty seeds / indices"
    if field in ("seeds", "indices") and kind == "too_long" or field == "count" and kind == "less_than_equal":
        n = value if field == "count" else len(value)
        return (f"{n} images is above this server's limit of {max_images} per request (imf serve --max-images): "
                "split the request")
    if field == "format":
        return f"format {value!r}: choose one of {', '.join(FORMATS)}"
    where = field + "".join(f"[{k}]" for k in loc[1:] if isinstance(k, int))
    return f"{where} {_shown(value)}: must be {ACCEPTS.get(field, 'as /openapi.json says')}"


def _shown(value) -> str:
    try:
        return json.dumps(value)[:80]
    except (TypeError, ValueError):
        return repr(value)[:80]
