"""The answer to a request: the bytes and media type of its format, and the headers every answer carries.

    X-IMF-Model-Version    NAME/VERSION of the registered version that made the images (or the model folder)
    X-IMF-Images           images in the answer
    X-IMF-Batch-Requests   requests whose images were made in the same network call as these (dynamic batching)
    X-IMF-Batch-Images     images of that network call
"""

import base64
import io
import json
import math

import numpy as np

from ..data.images import grid_image

MEDIA_TYPES = {"png": "image/png", "npz": "application/octet-stream", "json": "application/json"}


def png_bytes(image) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def encode(result: dict, fmt: str) -> tuple[bytes, str]:
    """result: the generator's answer (images uint8 (n, H, W, 3), labels, seeds, indices, guidance, ...)."""
    images = result["images"]
    if fmt == "png":
        if len(images) == 1:
            return png_bytes(images[0]), MEDIA_TYPES[fmt]
        buffer = io.BytesIO()
        grid_image(images, columns=math.ceil(math.sqrt(len(images)))).save(buffer, format="PNG")
        return buffer.getvalue(), MEDIA_TYPES[fmt]
    if fmt == "npz":
        buffer = io.BytesIO()
        np.savez(buffer, arr_0=images, labels=np.asarray(result["labels"], np.int64),
                 seeds=np.asarray(result["seeds"], np.int64), indices=np.asarray(result["indices"], np.int64))
        return buffer.getvalue(), MEDIA_TYPES[fmt]
    rows = [{"class": int(c), "seed": int(s), "index": int(i), "png": base64.b64encode(png_bytes(image)).decode()}
            for c, s, i, image in zip(result["labels"], result["seeds"], result["indices"], images)]
    body = {"model_version": result["model_version"], "guidance": result["guidance"], "images": rows,
            "batch": {"requests": result["batch_requests"], "images": result["batch_images"]}}
    return json.dumps(body).encode(), MEDIA_TYPES["json"]


def headers(result: dict) -> dict:
    return {"X-IMF-Model-Version": result["model_version"], "X-IMF-Images": str(len(result["images"])),
            "X-IMF-Batch-Requests": str(result["batch_requests"]), "X-IMF-Batch-Images": str(result["batch_images"])}
