"""What the Serve tests share: the registered model they serve, and how they call the server."""

import http.client
import io
import json

import numpy as np
from PIL import Image

NAME = "served"
GUIDANCE = {"omega": 2.0, "t_min": 0.1, "t_max": 0.9, "steps": 1}  # stored on version 1 (its folder says 3.0)
CLASSES = [2, 0, 3]


def call(port, body, method="POST", route="/", headers=None):
    """(status, headers, body bytes) of one request to the server."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    conn.request(method, route, body=data, headers=headers or {"Content-Type": "application/json"})
    reply = conn.getresponse()
    out = reply.status, reply.headers, reply.read()  # headers: case-insensitive
    conn.close()
    return out


def npz_images(content: bytes):
    return np.load(io.BytesIO(content))


def png_pixels(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)).convert("RGB"))


def in_process(folder, seed, indices, labels, guidance=GUIDANCE):
    """The same images made in this process with imf_core's Generator (no Ray, no HTTP)."""
    from imf_core import load_generator
    from pipelines.data.images import as_rgb_uint8

    return as_rgb_uint8(load_generator(folder, "cpu").images(seed, indices, labels, **guidance))


def sample(store, out, seed, classes, num, **guidance) -> np.lib.npyio.NpzFile:
    """`imf sample` of version 1 into `out`: its samples.npz."""
    from pipelines import cli

    flags = [f"--{k.replace('_', '-')}={v}" for k, v in guidance.items()]
    assert cli.main(["sample", "--model", f"models:/{NAME}/1", "--num", str(num), "--out", str(out), "--seed",
                     str(seed), "--classes", ",".join(map(str, classes)), "--shard-size", str(num), "--actors", "1",
                     "--tracking-uri", store.uri, *flags]) == 0
    return np.load(out / "samples.npz")
