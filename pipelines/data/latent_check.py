"""The check of a latent set (an `imf encode` output) before training reads it: footers only, never the rows.

    manifest = check_latent_set(latent_dir, cfg.model)   # a UserError listing every problem found

What it covers, per shard the manifest lists (footers read in parallel threads): the file exists; its Parquet
footer is readable (a file cut short, as by an interrupted copy, has none); its schema is the one the manifest
describes (index int64, label int32, moments fixed_size_list<float16>[2*C*H*W], moments_flip with --flip, and
nothing else); its b"imf" metadata belongs to this encode (codec, latent shape, its own row count); its labels
lie in the manifest's classes (the footer's column statistics). Then: the rows sum to the manifest's
counts.encoded, no unlisted file lies among the shards, and the latent shape fits the configured model (square,
a multiple of its patch size). Damage in the middle of a file, behind an intact footer, is found only when
training reads it (pipelines/train/read_guard.py).
"""

import json
import posixpath
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import UserError
from ..storage import Location
from .shards import MANIFEST, METADATA_KEY, SHARD_DIR, read_manifest

MAX_LISTED = 5  # problems spelled out in one refusal; the rest are counted
FOOTER_THREADS = 16
REENCODE = "delete it and re-run the `imf encode` that wrote the set (it encodes only missing shards), or re-copy it"
RECOPY = "re-copy it, or re-run the `imf encode` that wrote the set (it encodes only missing shards)"


def expected_columns(manifest: dict) -> dict:
    """name -> the Arrow type `imf encode` writes for this manifest's latent shape and flip."""
    size = 2 * _volume(manifest["latent_shape"])
    moments = pa.list_(pa.float16(), size)
    columns = {"index": pa.int64(), "label": pa.int32(), "moments": moments}
    if manifest.get("flip"):
        columns["moments_flip"] = moments
    return columns


def _volume(shape) -> int:
    c, h, w = shape
    return c * h * w


def _type_matches(found: pa.DataType, wanted: pa.DataType) -> bool:
    if pa.types.is_fixed_size_list(wanted):  # the item field's name is not part of the format
        return (pa.types.is_fixed_size_list(found) and found.list_size == wanted.list_size
                and found.value_type == wanted.value_type)
    return found == wanted


def manifest_problems(manifest: dict) -> list[str]:
    """What in a manifest's fields no encode writes (read_manifest has checked that the keys exist)."""
    shape, shards, encoded = manifest["latent_shape"], manifest["shards"], manifest["counts"]["encoded"]
    problems = []
    if not (isinstance(shape, list) and len(shape) == 3 and all(type(s) is int and s > 0 for s in shape)):
        problems.append(f"latent_shape {shape!r} is not three positive whole numbers [C, H, W]")
    if not (isinstance(shards, list) and all(isinstance(s, str) for s in shards)):
        problems.append("shards is not a list of file names")
    elif outside := [s for s in shards if posixpath.dirname(s) != SHARD_DIR or ".." in s]:
        problems.append(f"shards names files outside {SHARD_DIR}/ (e.g. {outside[0]!r})")
    if encoded < 0:
        problems.append(f"counts.encoded is {encoded}")
    if not isinstance(manifest["class_names"], list) or not manifest["class_names"]:
        problems.append("class_names is not a non-empty list")
    elif manifest.get("num_classes", len(manifest["class_names"])) != len(manifest["class_names"]):
        problems.append(f"num_classes {manifest['num_classes']} disagrees with its {len(manifest['class_names'])} "
                        "class_names")
    if not isinstance(manifest["flip"], bool):
        problems.append(f"flip {manifest['flip']!r} is not true or false")
    return problems


def read_footer(shard: Location) -> pq.FileMetaData:
    """The shard's Parquet footer; a UserError naming the shard when it is missing or unreadable."""
    try:
        with shard.open_input() as f:
            return pq.read_metadata(f)
    except FileNotFoundError:
        raise UserError(f"{shard} is listed in the manifest but missing: {RECOPY}") from None
    except (pa.ArrowException, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else err.__class__.__name__
        raise UserError(f"{shard} is not a readable Parquet file ({reason}): it was cut short or damaged, as by an "
                        f"interrupted copy; {REENCODE}") from None


def schema_problem(shard: Location, schema: pa.Schema, manifest: dict) -> str | None:
    wanted = expected_columns(manifest)
    names = schema.names
    missing = [n for n in wanted if n not in names]
    extra = [n for n in names if n not in wanted]
    if missing or extra:
        parts = ([f"lacks column(s) {', '.join(missing)}"] if missing else []) + (
            [f"has column(s) {', '.join(extra)} no shard of this set has"] if extra else [])
        if "moments_flip" in missing + extra:
            parts.append(f"the manifest says flip: {str(manifest['flip']).lower()}")
        return f"{shard} {'; '.join(parts)}: it is not a shard of this latent set; {REENCODE}"
    for name, kind in wanted.items():
        found = schema.field(name).type
        if not _type_matches(found, kind):
            return (f"{shard}: column {name} is {found}, not {kind} as for latent_shape {manifest['latent_shape']} "
                    f"in the manifest: it is not a shard of this latent set; {REENCODE}")
    return None


def metadata_problem(shard: Location, footer: pq.FileMetaData, manifest: dict) -> str | None:
    raw = (footer.schema.to_arrow_schema().metadata or {}).get(METADATA_KEY)
    try:
        meta = json.loads(raw) if raw is not None else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        meta = None
    if not isinstance(meta, dict):
        return f"{shard} has no readable imf metadata: it was not written by `imf encode`; {REENCODE}"
    for key in ("latent_shape", "codec"):
        if key in meta and meta[key] != manifest.get(key):
            return (f"{shard} was encoded with {key} {meta[key]}, the manifest says {manifest.get(key)}: it is a "
                    f"shard of another encode; {REENCODE}")
    if isinstance(meta.get("encoded"), int) and meta["encoded"] != footer.num_rows:
        return (f"{shard} holds {footer.num_rows} rows where its metadata says {meta['encoded']}: it was damaged; "
                f"{REENCODE}")
    return None


def label_problem(shard: Location, footer: pq.FileMetaData, num_classes: int) -> str | None:
    """Labels outside [0, num_classes), from the footer's per-row-group statistics (when written)."""
    column = footer.schema.to_arrow_schema().get_field_index("label")
    for group in range(footer.num_row_groups):
        stats = footer.row_group(group).column(column).statistics
        if stats is not None and stats.has_min_max and not 0 <= stats.min <= stats.max < num_classes:
            return (f"{shard} holds labels from {stats.min} to {stats.max}, outside the manifest's {num_classes} "
                    f"classes: it is a shard of another encode; {REENCODE}")
    return None


def check_shard(shard: Location, manifest: dict) -> tuple[int, str | None]:
    """(rows in the footer, the shard's problem or None)."""
    try:
        footer = read_footer(shard)
    except UserError as err:
        return 0, str(err)
    problem = (schema_problem(shard, footer.schema.to_arrow_schema(), manifest)
               or metadata_problem(shard, footer, manifest)
               or label_problem(shard, footer, len(manifest["class_names"])))
    return footer.num_rows, problem


def unlisted_files(latent_dir: Location, listed: list[str]) -> list[str]:
    """Files among the shards that the manifest does not list (hidden ones, such as a write's temporary file,
    are left alone)."""
    present = (latent_dir / SHARD_DIR).files(recursive=True)
    names = {posixpath.relpath(s, SHARD_DIR) for s in listed}
    return [f"{SHARD_DIR}/{f}" for f in present if f not in names and not posixpath.basename(f).startswith(".")]


def shard_problems(latent_dir: Location, manifest: dict) -> list[str]:
    shards = [latent_dir.join(name) for name in manifest["shards"]]
    with ThreadPoolExecutor(max_workers=max(1, min(FOOTER_THREADS, len(shards)))) as pool:
        checked = list(pool.map(lambda shard: check_shard(shard, manifest), shards))
    problems = [problem for _, problem in checked if problem]
    problems += [f"{latent_dir.join(name)} is not listed in {MANIFEST}: remove it (a leftover of another encode "
                 "or copy), or re-encode into a new folder" for name in unlisted_files(latent_dir, manifest["shards"])]
    rows, encoded = sum(n for n, _ in checked), manifest["counts"]["encoded"]
    if not problems and rows != encoded:
        problems.append(f"the {len(shards)} shards of {latent_dir} hold {rows} rows but {MANIFEST} counts "
                        f"{encoded} (counts.encoded): the manifest and the shards come from different encodes; "
                        "re-encode into a new folder")
    return problems


def model_problem(latent_dir: Location, manifest: dict, model) -> str | None:
    """Whether the configured model (a config's `model` section) can take these latents."""
    from imf_core.model import SIZES, check_model

    c, h, w = manifest["latent_shape"]
    patch = model.overrides.get("patch_size", SIZES.get(model.name, {}).get("patch_size"))
    where = f"the latents of {latent_dir} are {c}x{h}x{w}" + (
        f" (encoded at --resolution {manifest['resolution']})" if manifest.get("resolution") else "")
    if h != w:
        return f"{where}: the model needs square latents; re-encode (the centre crop makes square images)"
    try:
        check_model(model.name, **{**model.overrides, "input_size": h, "in_channels": c})
    except (ValueError, TypeError) as err:
        return (f"{where}, which model {model.name} (patch_size {patch}) cannot take ({err}): re-encode at a "
                f"--resolution {suggested_resolution(manifest, patch)}, or set model.name / "
                f"model.overrides.patch_size to a patch size that divides {h}")
    return None


def suggested_resolution(manifest: dict, patch) -> str:
    """A --resolution near the encoded one whose latent side is a multiple of the patch size."""
    side, resolution = manifest["latent_shape"][1], manifest.get("resolution")
    if not (isinstance(patch, int) and isinstance(resolution, int) and resolution % side == 0):
        return f"whose latent side is a multiple of {patch}"
    factor = resolution // side  # the codec's downsampling (1 for pixels, 8 for the SD-VAE)
    return f"that is a multiple of {factor * patch}, such as {factor * patch * max(1, round(side / patch))}"


def refusal(latent_dir: Location, problems: list[str]) -> UserError:
    if len(problems) == 1:
        return UserError(problems[0])
    shown = "\n".join(f"  - {p}" for p in problems[:MAX_LISTED])
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return UserError(f"the latent set {latent_dir} has {len(problems)} problems:\n{shown}{more}")


def check_latent_set(latent_dir, model=None) -> dict:
    """The manifest of a latent set that training can read; a UserError naming each problem and its fix.
    model: the config's `model` section, to check the latent shape against it (None: not checked)."""
    latent_dir = Location.of(latent_dir)
    manifest = read_manifest(latent_dir)
    problems = manifest_problems(manifest)
    if problems:
        raise refusal(latent_dir, [f"{latent_dir / MANIFEST}: {p}; it was not written by `imf encode`: re-encode"
                                   for p in problems])
    problems = [p for p in [model is not None and model_problem(latent_dir, manifest, model)] if p]
    problems += shard_problems(latent_dir, manifest)
    if problems:
        raise refusal(latent_dir, problems)
    return manifest
