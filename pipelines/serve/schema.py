"""The request a client sends to `imf serve`, checked before any model work: a clear 400, never a traceback.

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
import math
from dataclasses import dataclass

FORMATS = ("png", "npz", "json")
FIELDS = ("class", "count", "seed", "seeds", "indices", "omega", "t_min", "t_max", "steps", "format")
MAX_STEPS = 32
MAX_SEED = 2**63 - 1
EXAMPLE = '{"class": 3, "count": 4, "seed": 0}'


class RequestError(ValueError):
    """A request the server refuses (HTTP 400, with this message)."""


@dataclass
class ImageRequest:
    classes: list  # one per image: indices or names, checked against the served model by its replica
    seeds: list
    indices: list
    guidance: dict  # omega, t_min, t_max, steps as given (None: the version's stored setting)
    format: str = "png"


def parse_request(body: bytes, max_images: int) -> ImageRequest:
    """The checked request of a JSON body; RequestError names the field and what it accepts."""
    try:
        data = json.loads(body or b"null")
    except ValueError as err:
        raise RequestError(f"the body is not JSON ({err}); send an object such as {EXAMPLE}") from None
    if not isinstance(data, dict):
        raise RequestError(f"the body must be a JSON object such as {EXAMPLE}")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise RequestError(f"unknown field(s) {', '.join(unknown)}: the fields are {', '.join(FIELDS)}")
    if "class" not in data:
        raise RequestError(f'"class" is required (a class index or name, or a list of them), e.g. {EXAMPLE}')
    if "seed" in data and "seeds" in data:
        raise RequestError('give "seed" (one for the request) or "seeds" (one per image), not both')
    seeds, indices = _integers(data, "seeds"), _integers(data, "indices")
    n = _count(data, seeds, indices, max_images)
    seed = _integer(data.get("seed", 0), "seed", 0, MAX_SEED)
    fmt = data.get("format", "png")
    if fmt not in FORMATS:
        raise RequestError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")
    guidance = {"omega": _number(data, "omega", 1.0, math.inf, "a number >= 1 (1: no guidance)"),
                "t_min": _number(data, "t_min", 0.0, 1.0, "a number in [0, 1]"),
                "t_max": _number(data, "t_max", 0.0, 1.0, "a number in [0, 1]"),
                "steps": None if data.get("steps") is None else _integer(data["steps"], "steps", 1, MAX_STEPS)}
    if None not in (guidance["t_min"], guidance["t_max"]) and guidance["t_min"] > guidance["t_max"]:
        raise RequestError(f"t_min {guidance['t_min']} is above t_max {guidance['t_max']}")
    return ImageRequest(_classes(data["class"], n), seeds or [seed] * n, indices or list(range(n)), guidance, fmt)


def _count(data, seeds, indices, max_images: int) -> int:
    sizes = {name: len(v) for name, v in (("seeds", seeds), ("indices", indices)) if v is not None}
    if "count" in data:
        sizes["count"] = _integer(data["count"], "count", 1, math.inf)
    if len(set(sizes.values())) > 1:
        raise RequestError(f"{' and '.join(f'{k} ({v})' for k, v in sizes.items())} disagree on the number of "
                           "images: give one of them, or make them agree")
    n = next(iter(sizes.values()), 1)
    if n < 1:
        raise RequestError("the request asks for no image: give count >= 1 or non-empty seeds / indices")
    if n > max_images:
        raise RequestError(f"{n} images is above this server's limit of {max_images} per request "
                           "(imf serve --max-images): split the request")
    return n


def _integers(data, name):
    if name not in data:
        return None
    if not isinstance(data[name], list):
        raise RequestError(f"{name} must be a list of integers >= 0, got {json.dumps(data[name])[:80]}")
    return [_integer(v, f"{name}[{k}]", 0, MAX_SEED) for k, v in enumerate(data[name])]


def _integer(value, name: str, low, high) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        bound = f"in {low}..{high}" if high != math.inf else f">= {low}"
        raise RequestError(f"{name} {json.dumps(value)[:80]}: must be an integer {bound}")
    return value


def _number(data, name: str, low, high, what: str):
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise RequestError(f"{name} {json.dumps(value)[:80]}: must be {what}")
    return float(value)


def _classes(value, n: int) -> list:
    given = value if isinstance(value, list) else [value]
    for c in given:
        if isinstance(c, bool) or not (isinstance(c, int) and c >= 0 or isinstance(c, str) and c):
            raise RequestError(f"class {json.dumps(c)[:80]}: a class index (integer >= 0) or a class name")
    if not given or len(given) > n:
        raise RequestError(f"class lists {len(given)} classes for {n} image(s): give one class, one per image, "
                           "or fewer classes (cycled over the images)")
    return [given[k % len(given)] for k in range(n)]
