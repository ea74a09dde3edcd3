"""Images in and out: class-folder trees, loading with ADM's centre crop, grey to RGB, sample grids.

A class-folder tree is ImageNet's train layout: one sub-folder per class, images of
any size and colour mode inside. Class index = position of the folder name in the
sorted list of class folders; image index = position in the list of all files sorted
by (class index, path), so every run over the same tree numbers files alike.
"""

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError

CROP = "adm-center"
DATASET_MARKER = ".imf_dataset.json"  # optional: {"dataset": NAME} (hidden files are not images)
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def list_image_tree(root) -> tuple[list[str], list[tuple[str, int]]]:
    """-> (class names, [(path relative to root, label)]) sorted by (label, path); hidden files skipped."""
    root = Path(root)
    hint = "pass a folder with one sub-folder per class (ImageNet's train layout), or make one with `imf data embedded --out DIR`"
    if not root.exists():
        raise UserError(f"image folder {root} does not exist: {hint}")
    if not root.is_dir():
        raise UserError(f"image folder {root} is a file, not a folder: {hint}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        what = "is empty" if not any(root.iterdir()) else "has no class sub-folders"
        raise UserError(f"image folder {root} {what}: {hint}")
    files = []
    for label, name in enumerate(classes):
        found = []
        for folder, subdirs, names in os.walk(root / name, followlinks=True):
            subdirs[:] = [d for d in subdirs if not d.startswith(".")]
            found += [os.path.relpath(os.path.join(folder, n), root) for n in names if not n.startswith(".")]
        files += [(rel, label) for rel in sorted(found)]
    if not files:
        raise UserError(f"the class folders of {root} ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}) "
                        f"hold no files: put the images inside them")
    return classes, files


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB: 16-bit scaled (not clipped), transparency composited over white."""
    if image.mode in SIXTEEN_BIT:
        # Pillow's own convert() clips 16-bit values at 255, which turns most images white.
        wide = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def center_crop(image: Image.Image, size: int) -> np.ndarray:
    """ADM's centre crop: halve with a box filter while the short side is >= 2 size, bicubic-resize
    the short side to `size` (upscaling small images), crop the centre. -> uint8 (size, size, 3)."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(side // 2 for side in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(side * scale) for side in image.size), resample=Image.BICUBIC)
    pixels = np.asarray(image)
    top, left = (pixels.shape[0] - size) // 2, (pixels.shape[1] - size) // 2
    return pixels[top:top + size, left:left + size]


def load_image(path, size: int) -> np.ndarray:
    """Read, convert to RGB and centre-crop one image; raises ValueError with a readable reason."""
    try:
        if os.path.getsize(path) == 0:
            reason = "empty file (0 bytes)"
        else:
            with Image.open(path) as image:
                image.load()  # decodes now: truncated files fail here, not later
                return center_crop(to_rgb(image), size)
    except Image.UnidentifiedImageError:
        reason = "not an image Pillow can read"
    except Exception as err:  # Pillow's plugins raise many kinds (OSError, SyntaxError, struct.error, ...)
        reason = f"unreadable image ({err.__class__.__name__}: {err})"
    raise ValueError(reason)


def decode_shard(root, paths, indices, labels, resolution: int) -> dict:
    """Load and crop one shard's images. -> index, label, pixels uint8 (N, R, R, 3), rejects [{path, reason}]."""
    pixels, kept, rejects = [], [], []
    for i, rel in enumerate(paths):
        try:
            pixels.append(load_image(os.path.join(root, rel), resolution))
            kept.append(i)
        except ValueError as err:
            rejects.append({"path": str(rel), "reason": str(err)})
    stack = np.stack(pixels) if pixels else np.zeros((0, resolution, resolution, 3), np.uint8)
    return {"index": np.asarray(indices, np.int64)[kept], "label": np.asarray(labels, np.int32)[kept],
            "pixels": stack, "rejects": rejects}


def decode_shard_row(batch: dict, root: str, resolution: int) -> dict:
    """Ray Data stage of `imf encode`: one shard row (paths) -> one shard row (pixels). Lives here,
    not in encode.py, so that decode workers do not import torch."""
    decoded = decode_shard(root, batch["path"][0], batch["index"][0], batch["label"][0], resolution)
    return {"shard": batch["shard"][:1], "index": decoded["index"][None], "label": decoded["label"][None],
            "pixels": decoded["pixels"][None], "rejects": np.array([json.dumps(decoded["rejects"])])}



def as_rgb_uint8(images):
    """numpy (N, H, W[, C]) or torch (N, C, H, W) uint8 with C in (1, 3) -> numpy (N, H, W, 3)."""
    if hasattr(images, "permute"):  # a torch tensor, channels first
        images = images.detach().cpu().permute(0, 2, 3, 1).numpy()
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be uint8 (N, H, W) or (N, H, W, 1 or 3), got {images.dtype} {images.shape}")
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def grid_image(images, columns: int, scale: int = 1, gap: int = 2) -> "Image.Image":
    """uint8 images (N, H, W, C) -> one image, `columns` per row, each pixel repeated `scale` times, tiles
    `gap` (mid-grey) pixels apart so that dark-background images do not run into each other."""
    pixels = np.asarray(images)
    if scale > 1:
        pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w, c = pixels.shape
    rows = -(-n // columns)
    grid = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap, c), 128, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, columns)
        top, left = r * (h + gap), col * (w + gap)
        grid[top:top + h, left:left + w] = pixels[i]
    return Image.fromarray(grid[..., 0] if c == 1 else grid, "L" if c == 1 else "RGB")


def save_grid(images, path, columns: int, scale: int = 1) -> Path:
    """uint8 images (N, H, W, C) -> one PNG file (see grid_image)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    grid_image(images, columns, scale).save(path)
    return Path(path)
