"""Reading image sets for evaluation: sample shards and reference images, streamed in batches.

Formats: `*.npz` with uint8 `arr_0` (N, H, W, 3) and optional int `labels` (ADM's evaluation format);
Parquet shards with a binary `png` column and an optional int `label`; PNG/JPEG files, flat or in class
folders (labelled as `imf encode` numbers classes: position in the sorted list of folder names).
Each set is a local path or a bucket prefix (s3://...; storage.py), read file by file.
"""

import io
import json
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from .. import hooks
from ..data.images import as_rgb_uint8, center_crop, list_image_tree, save_grid, to_rgb
from ..errors import UserError
from ..storage import Location

PIXEL_LIMIT = 32 * 32 * 3  # images up to this many values are kept in memory for the pixel metrics
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _decode(source, data, crop):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image = to_rgb(image)
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise UserError(f"{source}: not a readable image ({err}): remove it or re-run the step that wrote it") from err
    return center_crop(image, crop) if crop else np.asarray(image)


def _stack(source, images):
    if len({im.shape for im in images}) > 1:
        raise UserError(f"{source}: images of several sizes {sorted({im.shape[:2] for im in images})}: give "
                        "images of one size (photos: `imf evaluate reference --center-crop SIZE`)")
    return np.stack(images)


def _npz_arrays(f):
    """(images, labels or None) of one .npz; a UserError naming it when it cannot be read to the end."""
    try:
        with np.load(io.BytesIO(f.read_bytes()), allow_pickle=False) as data:
            if "arr_0" not in data.files:
                raise UserError(f"{f}: no `arr_0` array: sample shards hold uint8 arr_0 of shape (N, H, W, 3)")
            images = data["arr_0"]
            labels = data["labels"].astype(np.int64) if "labels" in data.files else None
    except (ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise UserError(f"{f} cannot be read ({str(err).splitlines()[0]}): it was damaged; re-run the step that "
                        "wrote it, or remove it") from None
    try:
        return as_rgb_uint8(images), labels
    except ValueError as err:
        raise UserError(f"{f}: {err}") from None


def _npz_batches(files):
    for f in files:
        images, labels = _npz_arrays(f)
        if labels is not None and labels.shape != (len(images),):
            raise UserError(f"{f}: labels of shape {labels.shape} for {len(images)} images")
        yield images, labels, str(f)


def _parquet_batches(files, batch_size, crop):
    import pyarrow.parquet as pq

    for f in files:
        shard = pq.ParquetFile(f.open_input())
        names = shard.schema_arrow.names
        if "png" not in names:
            raise UserError(f"{f}: no `png` column (has {names}): sample shards hold PNG bytes in `png`")
        labelled = "label" in names
        for batch in shard.iter_batches(batch_size=batch_size, columns=["png"] + (["label"] if labelled else [])):
            images = _stack(f, [_decode(f, b, crop) for b in batch.column("png").to_pylist()])
            yield images, batch.column("label").to_numpy().astype(np.int64) if labelled else None, str(f)


def _file_batches(root: Location, files, batch_size, crop):
    if root.is_dir() and any(not d.startswith(".") for d in root.dirs()):
        entries = [(root / rel, label) for rel, label in list_image_tree(root)[1]]
    else:
        entries = [(f, None) for f in files]
    for start in range(0, len(entries), batch_size):
        group = entries[start:start + batch_size]
        images = _stack(root, [_decode(f, f.read_bytes(), crop) for f, _ in group])
        labels = None if group[0][1] is None else np.array([label for _, label in group], dtype=np.int64)
        yield images, labels, str(group[0][0]).rsplit("/", 1)[0]


def iter_image_batches(path, batch_size=256, crop=None):
    """Yield (uint8 images (n, H, W, 3), int64 labels (n,) or None, source) from one of the formats above;
    `crop` (image files and Parquet only): ADM's centre crop to crop x crop."""
    path = Location.of(path)
    if not path.exists():
        raise not_found(path)
    files = [path] if path.is_file() else [path.join(rel) for rel in path.files()]
    npz = [f for f in files if f.name.lower().endswith(".npz")]
    parquet = [f for f in files if f.name.lower().endswith(".parquet")]
    pictures = [f for f in files if f.name.lower().endswith(IMAGE_SUFFIXES)]
    if npz:
        return _npz_batches(npz)
    if parquet:
        return _parquet_batches(parquet, batch_size, crop)
    if pictures:
        return _file_batches(path, pictures, batch_size, crop)
    raise no_image_files(path)


def not_found(path) -> UserError:
    """The refusal of a samples or reference path that does not exist (here and in set_check)."""
    return UserError(f"{path} not found: give a folder of images, such as the one `imf sample` wrote")


def no_image_files(path) -> UserError:
    """The refusal of a folder that holds no file of a kind an image set is read from (here and in set_check)."""
    return UserError(f"{path}: no .npz, .parquet, .png or .jpg files: give a folder of images, such as the one "
                     "`imf sample` wrote")


@dataclass
class Scan:
    """One pass over an image set: Inception outputs, the images (if small) and the labels (if all have one)."""
    count: int
    features: np.ndarray = None
    logits: np.ndarray = None
    images: np.ndarray = None
    labels: np.ndarray = None


def scan_images(path, extractor=None, batch_size=256, crop=None):
    """Read an image set once, through `extractor` (an InceptionFeatures) if given."""
    features, logits, images, labels = [], [], [], []
    shape, count, labelled = None, 0, True
    for batch, batch_labels, source in iter_image_batches(path, batch_size, crop):
        hooks.at("evaluate_batch", count=count)
        if shape is not None and batch.shape[1:] != shape:
            raise UserError(f"{source}: images are {batch.shape[1:]}, earlier ones {shape}: one size per set")
        shape, count = batch.shape[1:], count + len(batch)
        if extractor is not None:
            f, lg = extractor(batch)
            features.append(f)
            logits.append(lg)
        if int(np.prod(shape)) <= PIXEL_LIMIT:
            images.append(batch)
        labelled = labelled and batch_labels is not None
        labels.append(batch_labels)
    if count == 0:
        raise UserError(f"{path}: holds no images")

    def join(parts):
        return np.concatenate(parts) if parts else None

    return Scan(count, join(features), join(logits), join(images), join(labels) if labelled else None)


def samples_manifest(path) -> dict:
    """What `imf sample` recorded about a samples folder (model, version, guidance); {} for other folders."""
    file = Location.of(path) / "manifest.json"
    if not file.is_file():
        return {}
    try:
        manifest = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{file} is not readable JSON ({err}): re-run the `imf sample` that wrote it") from None
    return manifest if isinstance(manifest, dict) else {}


def sample_grid(path, out, per_class: int = 10, max_classes: int = 10, scale: int | None = None):
    """A PNG of the first `per_class` images of each of the first `max_classes` classes (one row per class),
    or of the first images when they carry no labels. None when the set holds no images."""
    rows, unlabelled = {}, []
    for images, labels, _ in iter_image_batches(path, batch_size=256):
        if labels is None:
            unlabelled.extend(images[: per_class * max_classes - len(unlabelled)])
        else:
            for image, label in zip(images, labels):
                if label in rows or len(rows) < max_classes:
                    rows.setdefault(label, [])
                    if len(rows[label]) < per_class:
                        rows[label].append(image)
        full = len(rows) == max_classes and all(len(r) == per_class for r in rows.values())
        if full or len(unlabelled) >= per_class * max_classes:
            break
    chosen = [im for label in sorted(rows) for im in rows[label]] or unlabelled
    if not chosen:
        return None
    width = max(len(r) for r in rows.values()) if rows else per_class
    if rows:  # pad short rows so that each class keeps its own row
        chosen = [im for label in sorted(rows) for im in
                  rows[label] + [np.zeros_like(rows[label][0])] * (width - len(rows[label]))]
    side = chosen[0].shape[0]
    return save_grid(np.stack(chosen), out, columns=width, scale=scale or max(1, 64 // side))
