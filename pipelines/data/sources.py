"""The three layouts ImageNet reaches users in, read from a local folder or a bucket alike.

    folders     one sub-folder per class of image files (the authors' train layout)
    webdataset  `.tar` shards whose samples are members KEY.jpg / KEY.JPEG / KEY.png ... and KEY.cls
    parquet     Parquet files with an image-bytes column (binary, or Hugging Face's struct {bytes, path})
                and an integer label column (`imagenet-1k` on the Hub)

Labels mean the same in all three: the class index. Class folders are numbered by their position in
the sorted list of folder names, which for ImageNet's synset folders (n01440764, ...) is the standard
0..999 order that the Hugging Face `label` column and the usual WebDataset `.cls` members store; those
two are taken as stored. Class names: the folder names; the Parquet files' ClassLabel names when the
Hugging Face metadata has them; else the indices as text.

A listing numbers every image (accepted or rejected) by its position: folders sorted by (class, path),
tar members and Parquet rows in file order (files sorted by name). Each image has a reference shown in
rejects (`cat/img.png`, `shard-0001.tar/KEY.jpg`, `train-0.parquet#17`) and a locator (tar: byte offset
and size of the member, read with one ranged request; Parquet: the row; folders: unused).
"""

import io
import json
import posixpath
import tarfile
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from ..storage import Location
from .images import IMAGE_SUFFIXES, decode_image, list_image_tree

FORMATS = ("folders", "webdataset", "parquet")
LABEL_COLUMNS = ("label", "labels", "cls", "class", "target")
NO_LABEL, NO_IMAGE = -1, -1


@dataclass
class Listing:
    format: str
    class_names: list
    files: list  # [(reference, label)]; label NO_LABEL when the input holds none for that image
    where: list = field(default_factory=list)  # [(offset, size)] per file (tar: bytes; parquet: (row, 0))
    image_column: str | None = None


def detect_format(images: Location) -> str:
    """webdataset or parquet when the input is such a file, or a folder holding them (and no sub-folders
    of images); else folders."""
    if images.is_file():
        names = [images.name]
    elif images.is_dir():
        names = images.files(recursive=False)
    else:
        return "folders"  # list_image_tree says what is wrong
    suffixes = {posixpath.splitext(n)[1].lower() for n in names if not posixpath.basename(n).startswith(".")}
    if ".tar" in suffixes:
        return "webdataset"
    if ".parquet" in suffixes:
        return "parquet"
    return "folders"


def list_images(images: Location, format: str | None = None, image_column=None, label_column=None) -> Listing:
    """Every image of the input, numbered; raises UserError naming the input and the fix."""
    format = format or detect_format(images)
    if format not in FORMATS:
        raise UserError(f"--format {format!r}: choose one of {', '.join(FORMATS)}")
    if format == "folders":
        classes, files = list_image_tree(images)
        return Listing("folders", classes, files, [(0, 0)] * len(files))
    found = _inputs(images, ".tar" if format == "webdataset" else ".parquet", format)
    if format == "webdataset":
        return _list_tars(found)
    return _list_parquet(found, image_column, label_column)


def _inputs(images: Location, suffix: str, format: str) -> list[tuple[str, Location]]:
    """[(name shown in references, location)] of the input files, sorted."""
    if images.is_file():
        return [(images.name, images)]
    if not images.is_dir():
        raise UserError(f"--images {images} does not exist: give a folder (or bucket prefix) of {suffix} files")
    names = [n for n in images.files() if n.lower().endswith(suffix) and not posixpath.basename(n).startswith(".")]
    if not names:
        raise UserError(f"--images {images} holds no {suffix} files (--format {format}): give the folder of the "
                        f"shards, or --format for the layout it has")
    return [(n, images.join(n)) for n in names]


def _tar_members(name: str, where: Location) -> list[tuple[str, dict]]:
    """[(key, {ext: member})] of one tar, in file order."""
    samples = {}
    try:
        with where.open_input() as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
            for member in tar:
                if not member.isfile() or posixpath.basename(member.name).startswith("."):
                    continue
                base = posixpath.basename(member.name)
                key = posixpath.join(posixpath.dirname(member.name), base.split(".", 1)[0])
                ext = base.split(".", 1)[1].lower() if "." in base else ""
                entry = samples.setdefault(key, {})
                entry[ext] = member
                if ext == "cls":
                    entry["label"] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError) as err:
        raise UserError(f"{where}: not a readable tar file ({err}): "
                        "replace the shard, or remove it from --images") from None
    return list(samples.items())


def _list_tars(found) -> Listing:
    files, where, top = [], [], -1
    for name, location in found:
        for key, entry in _tar_members(name, location):
            image_ext = next((e for e in entry if "." + e in IMAGE_SUFFIXES), None)
            label = _parse_cls(entry.get("label"))
            top = max(top, label)
            if image_ext is None:
                files.append((f"{name}/{key}", label))
                where.append((NO_IMAGE, 0))
            else:
                member = entry[image_ext]
                files.append((f"{name}/{posixpath.basename(member.name)}", label))
                where.append((member.offset_data, member.size))
    if not files:
        raise UserError(f"the tar shards ({found[0][1]}, ...) hold no samples: "
                        "WebDataset shards hold KEY.jpg and KEY.cls")
    return Listing("webdataset", [str(c) for c in range(top + 1)], files, where)


def _parse_cls(data) -> int:
    try:
        return int(data.decode().strip()) if data is not None else NO_LABEL
    except (ValueError, UnicodeDecodeError):
        return NO_LABEL


def parquet_file(location: Location):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(location.open_input())
    except (OSError, ValueError) as err:
        raise UserError(f"{location}: not a readable Parquet file ({err}): "
                        "replace it, or remove it from --images") from None


def _columns(location: Location, schema, image_column, label_column) -> tuple[str, str]:
    import pyarrow as pa

    def is_image(t):
        return pa.types.is_binary(t) or pa.types.is_large_binary(t) or (
            pa.types.is_struct(t) and t.get_field_index("bytes") >= 0)

    names = schema.names
    image = image_column or next((n for n in names if is_image(schema.field(n).type)), None)
    label = label_column or next((n for n in LABEL_COLUMNS
                                  if n in names and pa.types.is_integer(schema.field(n).type)), None)
    for flag, column in (("--image-column", image), ("--label-column", label)):
        if column is None or column not in names:
            raise UserError(f"{location}: no {'image bytes' if flag == '--image-column' else 'integer label'} column "
                            f"{'named ' + repr(column) + ' ' if column else ''}found (columns: {', '.join(names)}): "
                            f"name it with {flag}")
    return image, label


def _class_names(schema, label: str) -> list | None:
    """ClassLabel names from Hugging Face's schema metadata, if there."""
    try:
        info = json.loads((schema.metadata or {})[b"huggingface"])
        names = info["info"]["features"][label]["names"]
        return [str(n) for n in names] if isinstance(names, list) else None
    except (KeyError, TypeError, ValueError):
        return None


def _list_parquet(found, image_column, label_column) -> Listing:
    files, where, top, names = [], [], -1, None
    for name, location in found:
        pf = parquet_file(location)
        schema = pf.schema_arrow
        image_column, label_column = _columns(location, schema, image_column, label_column)
        names = names or _class_names(schema, label_column)
        labels = pf.read(columns=[label_column]).column(label_column).to_pylist()
        for row, label in enumerate(labels):
            label = NO_LABEL if label is None or label < 0 else int(label)
            top = max(top, label)
            files.append((f"{name}#{row}", label))
            where.append((row, 0))
    if not files:
        raise UserError(f"the Parquet files ({found[0][1]}, ...) hold no rows")
    classes = names if names and len(names) > top else [str(c) for c in range(top + 1)]
    return Listing("parquet", classes, files, where, image_column)


# --- reading one shard's images (in Ray Data decode tasks) ---------------------------------------

def _read_folder(source: dict, refs, where):
    out = []
    for ref in refs:
        try:
            out.append(source["root"].join(ref).read_bytes())
        except OSError as err:
            out.append(ValueError(f"unreadable file ({err})"))
    return out


def _input(source: dict, name: str) -> Location:
    """The input file a reference names: --images itself when it was one file."""
    root = source["root"]
    return root if source.get("single") else root.join(name)


def _read_tar(source: dict, refs, where):
    out, opened = [], {}
    for ref, (offset, size) in zip(refs, where):
        if offset == NO_IMAGE:
            out.append(ValueError("no image member (.jpg, .jpeg, .png, ...) for this key in the tar"))
            continue
        tar = ref.rsplit("/", 1)[0]
        try:
            if tar not in opened:
                opened[tar] = _input(source, tar).open_input()
            out.append(opened[tar].read_at(size, offset))
        except OSError as err:
            out.append(ValueError(f"unreadable tar member ({err})"))
    for f in opened.values():
        f.close()
    return out


def _read_parquet(source: dict, refs, where):
    column_name = source["image_column"]
    out, by_file = [None] * len(refs), {}
    for i, (ref, (row, _)) in enumerate(zip(refs, where)):
        by_file.setdefault(ref.rsplit("#", 1)[0], []).append((i, row))
    for name, items in by_file.items():
        pf = parquet_file(_input(source, name))
        starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
        groups = {}
        for i, row in items:
            groups.setdefault(int(np.searchsorted(starts, row, side="right") - 1), []).append((i, row))
        for g, members in groups.items():  # only the row groups this shard needs, only the image column
            column = pf.read_row_group(g, columns=[column_name]).column(column_name).to_pylist()
            for i, row in members:
                value = column[row - int(starts[g])]
                value = value.get("bytes") if isinstance(value, dict) else value
                out[i] = value if value is not None else ValueError(f"no image bytes in column {column_name!r}")
    return out


def decode_shard(source: dict, refs, where, indices, labels, resolution: int) -> dict:
    """Read, decode and crop one shard's images. -> index, label, pixels uint8 (N, R, R, 3),
    rejects [{path, reason}]."""
    readers = {"folders": _read_folder, "webdataset": _read_tar, "parquet": _read_parquet}
    blobs = readers[source["format"]](source, refs, where)
    pixels, kept, rejects = [], [], []
    for i, (ref, blob) in enumerate(zip(refs, blobs)):
        try:
            if labels[i] == NO_LABEL:
                raise ValueError("no class label (WebDataset: a KEY.cls member; Parquet: a non-null label)")
            if isinstance(blob, Exception):
                raise blob
            pixels.append(decode_image(blob, resolution))
            kept.append(i)
        except ValueError as err:
            rejects.append({"path": str(ref), "reason": str(err)})
    stack = np.stack(pixels) if pixels else np.zeros((0, resolution, resolution, 3), np.uint8)
    return {"index": np.asarray(indices, np.int64)[kept], "label": np.asarray(labels, np.int32)[kept],
            "pixels": stack, "rejects": rejects}


def decode_shard_row(batch: dict, source: dict, resolution: int) -> dict:
    """Ray Data stage of `imf encode`: one shard row (references) -> one shard row (pixels). Lives here,
    not in encode.py, so that decode workers do not import torch."""
    where = list(zip(batch["offset"][0], batch["size"][0]))
    decoded = decode_shard(source, list(batch["path"][0]), where, batch["index"][0], batch["label"][0], resolution)
    return {"shard": batch["shard"][:1], "index": decoded["index"][None], "label": decoded["label"][None],
            "pixels": decoded["pixels"][None], "rejects": np.array([json.dumps(decoded["rejects"])])}


def tar_bytes(samples: list[tuple[str, dict]]) -> bytes:
    """A WebDataset tar: [(key, {ext: bytes})] -> the tar's bytes (tests and small conversions)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
