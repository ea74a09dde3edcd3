"""Small class-folder image trees for the encode and shard tests."""

import io
from pathlib import Path

import numpy as np
from PIL import Image


def pattern(size: int, seed: int) -> np.ndarray:
    """A left/right asymmetric RGB image (so a mirror image differs), uint8 (size, size, 3)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    image[:, : size // 2, 0] = 255
    return image


def make_tree(root, classes=("cat", "ant", "bee"), per_class: int = 4, size: int = 16) -> dict:
    """RGB PNGs of exactly `size` pixels (the crop is then the identity). -> {relative path: pixels}."""
    root = Path(root)
    written = {}
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = pattern(size, seed=100 * c + i)
            rel = f"{name}/img{i:02d}.png"
            Image.fromarray(pixels).save(root / rel)
            written[rel] = pixels
    return written


def truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pattern(64, seed=7)).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    return data[: len(data) // 2]


def sixteen_bit_png(path, value: int, size: int = 16):
    Image.fromarray(np.full((size, size), value, dtype=np.uint16)).save(path)
