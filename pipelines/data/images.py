"""Images in and out: class-folder trees, loading with ADM's centre crop, grey to RGB, sample grids.

A class-folder tree is ImageNet's train layout: one sub-folder per class, images of
any size and colour mode inside. Class index = position of the folder name in the
sorted list of class folders; image index = position in the list of all files sorted
by (class index, path), so every run over the same tree numbers files alike.
"""

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError

CROP = "adm-center"
DATASET_MARKER = ".imf_dataset.json"  # optional: {"dataset": NAME} (hidden files are not images)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def list_image_tree(root) -> tuple[list[str], list[tuple[str, int]]]:
    """-> (class names, [(path relative to root, label)]) sorted by (label, path); hidden files skipped.
    root: a local folder or a Location (a bucket prefix: its "folders" are the key prefixes)."""
    from ..storage import Location

    root = Location.of(root)
    hint = ("pass a folder with one sub-folder per class (ImageNet's train layout), "
            "or make one with `imf data embedded --out DIR`")
    if not root.exists():
        raise UserError(f"image folder {root} does not exist: {hint}")
    if not root.is_dir():
        raise UserError(f"image folder {root} is a file, not a folder: {hint}")
    classes = [name for name in root.dirs() if not name.startswith(".")]
    if not classes:
        what = "is empty" if not (root.files(recursive=False) or root.dirs()) else "has no class sub-folders"
        raise UserError(f"image folder {root} {what}: {hint}")
    files = []
    for label, name in enumerate(classes):
        files += [(f"{name}/{rel}", label) for rel in _tree_files(root.join(name))]
    if not files:
        raise UserError(f"the class folders of {root} ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}) "
                        f"hold no files: put the images inside them")
    return classes, files


def _tree_files(folder) -> list[str]:
    """Paths relative to `folder` of its files, hidden ones (and those in hidden folders) skipped, sorted.
    Local folders follow symbolic links."""
    if not folder.is_local:
        return [rel for rel in folder.files() if not any(part.startswith(".") for part in rel.split("/"))]
    found = []
    for base, subdirs, names in os.walk(folder.path, followlinks=True):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        found += [os.path.relpath(os.path.join(base, n), folder.path) for n in names if not n.startswith(".")]
    return sorted(found)


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


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Decode, convert to RGB and centre-crop one image's bytes; raises ValueError with a readable reason."""
    try:
        if len(data) == 0:
            reason = "empty file (0 bytes)"
        else:
            with Image.open(io.BytesIO(data)) as image:
                image.load()  # decodes now: truncated files fail here, not later
                return center_crop(to_rgb(image), size)
    except Image.UnidentifiedImageError:
        reason = "not an image Pillow can read"
    except Exception as err:  # Pillow's plugins raise many kinds (OSError, SyntaxError, struct.error, ...)
        reason = f"unreadable image ({err.__class__.__name__}: {err})"
    raise ValueError(reason)


def load_image(path, size: int) -> np.ndarray:
    """decode_image of a file (a local path or a Location)."""
    from ..storage import Location

    return decode_image(Location.of(path).read_bytes(), size)


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
