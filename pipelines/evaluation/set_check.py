"""The check of what `imf evaluate` reads, before anything is scored: array headers, Parquet footers and image
headers, never the pixels.

    check_image_set(samples, reference, metrics)   # a UserError listing every problem found
    check_reference(reference, path)               # the arrays of a loaded Reference fit together

Per file of a sample set: an `.npz` opens as a zip archive (a file cut short has no central directory), holds a
uint8 `arr_0` of shape (N, H, W[, 1 or 3]) and, if any, integer `labels` of shape (N,); a Parquet file has a
readable footer, a binary `png` column and, if any, an integer `label` column; an image file has a readable
header (local folders only: a bucket's files are checked when read). Across the set: one image size, labels in
every file or in none, at least one image, labels within the reference's classes, and the size of the
reference's images when pixel metrics compare them. Damage behind a readable header is reported with the file's
name when the scan reads it (image_sets.py).
"""

import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from ..storage import Location
from .image_sets import IMAGE_SUFFIXES, no_image_files, not_found

MAX_LISTED = 5
HEADER_THREADS = 16
REWRITE = "re-run the `imf sample` (or the step) that wrote it, or remove it"


@dataclass
class FileSummary:
    """What one file of a set holds, from its header: images, their (H, W) when known, whether it has labels and
    their (min, max) when known."""
    count: int
    size: tuple | None
    labelled: bool = False
    label_range: tuple | None = None


def npy_header(archive: zipfile.ZipFile, name: str) -> tuple[tuple, np.dtype]:
    """(shape, dtype) of one array of an .npz, from its header."""
    with archive.open(f"{name}.npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    return shape, dtype


def npz_summary(f: Location) -> FileSummary:
    try:
        with f.open_input() as raw, zipfile.ZipFile(raw) as archive:
            names = {n.removesuffix(".npy") for n in archive.namelist()}
            if "arr_0" not in names:
                raise UserError(f"{f}: no `arr_0` array (has {sorted(names)}): sample shards hold uint8 arr_0 "
                                f"of shape (N, H, W, 3); {REWRITE}")
            shape, dtype = npy_header(archive, "arr_0")
            labels = np.load(archive.open("labels.npy"), allow_pickle=False) if "labels" in names else None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise UserError(f"{f} is not a readable .npz ({str(err).splitlines()[0] if str(err) else 'damaged'}): it "
                        f"was cut short or damaged; {REWRITE}") from None
    if dtype != np.uint8 or len(shape) not in (3, 4) or len(shape) == 4 and shape[-1] not in (1, 3):
        raise UserError(f"{f}: arr_0 is {dtype} of shape {shape}, not uint8 (N, H, W[, 1 or 3]) images; {REWRITE}")
    if labels is not None and (labels.shape != shape[:1] or not np.issubdtype(labels.dtype, np.integer)):
        raise UserError(f"{f}: labels are {labels.dtype} of shape {labels.shape}, not whole numbers of shape "
                        f"({shape[0]},) for its {shape[0]} images; {REWRITE}")
    span = (int(labels.min()), int(labels.max())) if labels is not None and len(labels) else None
    return FileSummary(shape[0], tuple(shape[1:3]), labels is not None, span)


def parquet_summary(f: Location) -> FileSummary:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with f.open_input() as raw:
            footer = pq.read_metadata(raw)
    except (pa.ArrowException, OSError) as err:
        raise UserError(f"{f} is not a readable Parquet file ({str(err).splitlines()[0]}): it was cut short or "
                        f"damaged; {REWRITE}") from None
    schema = footer.schema.to_arrow_schema()
    png = schema.field("png").type if "png" in schema.names else None
    if png is None or not (pa.types.is_binary(png) or pa.types.is_large_binary(png)):
        columns = ", ".join(f"{field.name} {field.type}" for field in schema)
        raise UserError(f"{f}: no binary `png` column (has {columns}): sample shards hold PNG bytes in `png`; "
                        f"{REWRITE}")
    if "label" in schema.names and not pa.types.is_integer(schema.field("label").type):
        raise UserError(f"{f}: column label is {schema.field('label').type}, not whole numbers; {REWRITE}")
    labelled = "label" in schema.names
    span = statistics_range(footer, schema.get_field_index("label")) if labelled else None
    return FileSummary(footer.num_rows, None, labelled, span)


def statistics_range(footer, column: int) -> tuple | None:
    """(min, max) of a column over the row groups' statistics; None when a group has none."""
    lows, highs = [], []
    for group in range(footer.num_row_groups):
        stats = footer.row_group(group).column(column).statistics
        if stats is None or not stats.has_min_max:
            return None
        lows.append(stats.min)
        highs.append(stats.max)
    return (min(lows), max(highs)) if lows else None


def image_summary(f: Location) -> FileSummary:
    from PIL import Image, UnidentifiedImageError

    try:
        with f.open_input() as raw, Image.open(raw) as image:
            size = image.size[::-1]
    except UnidentifiedImageError:
        raise UserError(f"{f}: not a readable image (no image format Pillow knows): {REWRITE}") from None
    except (OSError, ValueError) as err:
        raise UserError(f"{f}: not a readable image ({err}): {REWRITE}") from None
    return FileSummary(1, size)


def summarize(f: Location) -> FileSummary | str:
    name = f.name.lower()
    reader = npz_summary if name.endswith(".npz") else parquet_summary if name.endswith(".parquet") else image_summary
    try:
        return reader(f)
    except UserError as err:
        return str(err)


def set_files(path: Location) -> list[Location]:
    """The files the scan would read (image_sets.iter_image_batches picks one format: npz, then parquet, then
    images); image files of a bucket are left to the scan."""
    files = [path] if path.is_file() else [path.join(rel) for rel in path.files()]
    for suffixes in ((".npz",), (".parquet",), IMAGE_SUFFIXES):
        chosen = [f for f in files if f.name.lower().endswith(suffixes)]
        if chosen:
            return chosen if suffixes != IMAGE_SUFFIXES or path.is_local else []
    raise no_image_files(path)


def set_problems(path: Location, summaries: dict, reference, pixel_metrics: bool) -> list[str]:
    good = {f: s for f, s in summaries.items() if isinstance(s, FileSummary)}
    problems = [s for s in summaries.values() if isinstance(s, str)]
    sizes = {}
    for f, s in good.items():
        if s.size is not None:
            sizes.setdefault(s.size, f)
    if len(sizes) > 1:
        (a, fa), (b, fb) = list(sizes.items())[:2]
        problems.append(f"{path} mixes image sizes: {fa} holds {a[0]}x{a[1]}, {fb} {b[0]}x{b[1]}; give images of "
                        "one size (one `imf sample` output per folder)")
    labelled = [f for f, s in good.items() if s.labelled]
    if labelled and len(labelled) < len(good):
        bare = next(f for f, s in good.items() if not s.labelled)
        problems.append(f"{labelled[0]} has labels but {bare} has none: labels in every file of {path} or in none "
                        "(re-run the `imf sample` that wrote it)")
    if good and not problems and sum(s.count for s in good.values()) == 0:
        problems.append(f"{path} holds no images: give the folder `imf sample` wrote, after it finished")
    problems += reference_problems(path, good, reference, pixel_metrics, sizes)
    return problems


def reference_problems(path, good: dict, reference, pixel_metrics: bool, sizes: dict) -> list[str]:
    if reference is None:
        return []
    problems = []
    classes = None if reference.labels is None or not len(reference.labels) else int(np.max(reference.labels)) + 1
    for f, s in good.items():
        if s.label_range is not None and (s.label_range[0] < 0 or classes and s.label_range[1] >= classes):
            bound = f"the reference `{reference.name}` has classes 0..{classes - 1}" if classes else "labels are >= 0"
            problems.append(f"{f} holds labels {s.label_range[0]}..{s.label_range[1]}, but {bound}: these samples "
                            "are of another dataset, or their labels are damaged; " + REWRITE)
    small = reference.images is not None and pixel_metrics
    if small and len(sizes) == 1:
        (size, f), = sizes.items()
        want = tuple(reference.images.shape[1:3])
        if size != want and int(np.prod(size)) * 3 <= 32 * 32 * 3:
            problems.append(f"{f} holds {size[0]}x{size[1]} images, the reference `{reference.name}` {want[0]}x"
                            f"{want[1]}: the pixel metrics compare images of one size; give samples of the "
                            "reference's dataset, or --metrics fid,is,pr with Inception weights")
    return problems


def refusal(path, problems: list[str]) -> UserError:
    if len(problems) == 1:
        return UserError(problems[0])
    shown = "\n".join(f"  - {p}" for p in problems[:MAX_LISTED])
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return UserError(f"{path} has {len(problems)} problems:\n{shown}{more}")


def check_image_set(path, reference=None, metrics: str = "auto"):
    """Refuse an image set the scan could not read to the end, or whose labels or size the reference cannot
    score; reference: a loaded Reference (None: only the set itself is checked)."""
    path = Location.of(path)
    if not path.exists():
        raise not_found(path)
    files = set_files(path)
    with ThreadPoolExecutor(max_workers=max(1, min(HEADER_THREADS, len(files)))) as pool:
        summaries = dict(zip(files, pool.map(summarize, files)))
    pixel_metrics = metrics in (None, "auto") or any(m in metrics.split(",") for m in ("fd_pixels", "cls_acc",
                                                                                       "pr_pixels"))
    problems = set_problems(path, summaries, reference, pixel_metrics)
    if problems:
        raise refusal(path, problems)


def check_reference(ref, path):
    """The arrays of a reference fit together: Inception statistics of one width, labels for its images."""
    problems = []
    if ref.mu is not None and (ref.mu.ndim != 1 or ref.sigma.shape != (len(ref.mu),) * 2):
        problems.append(f"mu {ref.mu.shape} and sigma {ref.sigma.shape} are not a mean and its square covariance")
    if ref.features is not None and (ref.features.ndim != 2 or ref.mu is not None
                                     and ref.features.shape[1:] != ref.mu.shape):
        problems.append(f"features {ref.features.shape} are not rows of the statistics' width")
    if ref.labels is not None:
        if ref.labels.ndim != 1 or not np.issubdtype(ref.labels.dtype, np.integer) or ref.labels.min(initial=0) < 0:
            problems.append(f"labels are {ref.labels.dtype} of shape {ref.labels.shape}, not class numbers >= 0")
        elif ref.images is not None and len(ref.labels) != len(ref.images):
            problems.append(f"{len(ref.labels)} labels for {len(ref.images)} images")
    for key in ("mu", "sigma", "features"):
        value = getattr(ref, key)
        if value is not None and (not np.issubdtype(value.dtype, np.floating) or not np.isfinite(value).all()):
            problems.append(f"{key} is {value.dtype} with values that are not finite numbers")
    if problems:
        raise UserError(f"reference {path}: {'; '.join(problems)}: remake it with `imf evaluate reference`")
