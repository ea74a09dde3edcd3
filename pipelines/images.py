"""Small image helpers: sample grids as PNG."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imf_core import to_uint8


def save_grid(images: torch.Tensor, path, columns: int, scale: int = 1):
    """images (N, C, H, W) in [-1, 1] -> one PNG, `columns` per row, each pixel repeated `scale` times."""
    pixels = to_uint8(images).cpu()
    n, c, h, w = pixels.shape
    rows = -(-n // columns)
    grid = torch.zeros(c, rows * h, columns * w, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, columns)
        grid[:, r * h:(r + 1) * h, col * w:(col + 1) * w] = pixels[i]
    array = grid.permute(1, 2, 0).numpy()
    if scale > 1:
        array = np.kron(array, np.ones((scale, scale, 1), dtype=np.uint8))
    mode = "L" if c == 1 else "RGB"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array[..., 0] if c == 1 else array, mode).save(path)
    return Path(path)
