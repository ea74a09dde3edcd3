"""Latent shards written by `imf encode`, and the reader that training uses.

Layout of an encode output folder (a local folder or a bucket prefix):
    manifest.json            written last: its presence means the encode finished
    encode_plan.json         what the run was asked to do (compared on re-runs)
    shards/shard-00000.parquet, ...

Parquet columns, plain Arrow types only:
    index         int64    stable id of the image: its position in the list of all files of
                           the tree (accepted and rejected) sorted by (class, path)
    label         int32    position of the class folder in the sorted list of class folders
    moments       fixed_size_list<float16>[2*C*H*W]   posterior mean then std, each flattened (C, H, W)
    moments_flip  same type, moments of the horizontally mirrored image (only with --flip)
File metadata key b"imf": JSON with the codec description (`codec`, from codec.describe()),
`resolution`, `crop` ("adm-center"), `latent_shape` [C, H, W], `flip`, `class_names`, and
for the shard itself `shard`, `encoded`, `rejects` and `stats` (per-channel sums of the means).

manifest.json: `codec`, `resolution`, `crop`, `latent_shape`, `flip`, `class_names`,
`num_classes`, `counts` {encoded, rejected, files}, `rejects` [{path, reason}] (paths relative
to `images`), `latent_stats` {mean, std} per channel of the posterior means, `shards` (paths
relative to the folder).

Training reads them through Ray Data:
    manifest = read_manifest(latent_dir)
    ds = latent_dataset(latent_dir)            # or ray.train.get_dataset_shard("train")
    for batch in ds.iter_torch_batches(batch_size=256, dtypes=TORCH_DTYPES):
        x, y = to_training_batch(batch, generator, manifest["latent_shape"], flip=manifest["flip"])
TORCH_DTYPES also names moments_flip; iter_torch_batches accepts it when the column is absent.
Each use draws a fresh posterior sample mean + std * noise and, with flip, picks the mirrored
moments for each row with probability 1/2, all from the given generator (flip choices first, then noise).
"""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from imf_core.codecs import posterior_sample

from ..errors import UserError
from ..storage import Location

METADATA_KEY = b"imf"
MANIFEST = "manifest.json"
PLAN = "encode_plan.json"
SHARD_DIR = "shards"
TORCH_DTYPES = {"index": torch.int64, "label": torch.int64, "moments": torch.float32, "moments_flip": torch.float32}


def shard_path(out, shard: int) -> Location:
    return Location.of(out).join(SHARD_DIR, f"shard-{shard:05d}.parquet")


def moments_array(mean: np.ndarray, std: np.ndarray) -> pa.FixedSizeListArray:
    """(N, C, H, W) mean and std -> fixed_size_list<float16>[2*C*H*W], mean first."""
    n, size = len(mean), int(np.prod(mean.shape[1:]))
    flat = np.concatenate([mean.reshape(n, size), std.reshape(n, size)], axis=1).astype(np.float16)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), 2 * size)


def shard_table(index, label, moments, moments_flip=None, meta: dict | None = None) -> pa.Table:
    columns = {"index": pa.array(np.asarray(index, dtype=np.int64)),
               "label": pa.array(np.asarray(label, dtype=np.int32)),
               "moments": moments}
    if moments_flip is not None:
        columns["moments_flip"] = moments_flip
    table = pa.table(columns)
    return table.replace_schema_metadata({METADATA_KEY: json.dumps(meta or {}).encode()})


def write_shard(path, table: pa.Table) -> Location:
    """Write one shard whole (see storage.Location.open_output)."""
    path = Location.of(path)
    with path.open_output() as f:
        pq.write_table(table, f, compression="zstd")
    return path


def shard_metadata(path) -> dict:
    """The b"imf" metadata of one shard (reads the footer only)."""
    path = Location.of(path)
    with path.open_input() as f:
        meta = pq.read_schema(f).metadata or {}
    if METADATA_KEY not in meta:
        raise UserError(f"{path} has no imf metadata: it was not written by `imf encode`")
    return json.loads(meta[METADATA_KEY])


def read_manifest(latent_dir) -> dict:
    """manifest.json of a finished encode; a UserError naming the folder and the fix otherwise."""
    latent_dir = Location.of(latent_dir)
    if not latent_dir.is_dir():
        raise UserError(f"latent folder {latent_dir} does not exist: "
                        f"run `imf encode --images DIR --out {latent_dir}` first")
    path = latent_dir / MANIFEST
    if not path.is_file():
        if (latent_dir / PLAN).is_file():
            raise UserError(f"the encode into {latent_dir} did not finish (no {MANIFEST}): "
                            "re-run the same `imf encode` command to complete the missing shards")
        raise UserError(f"{latent_dir} is not an `imf encode` output (no {MANIFEST}): "
                        f"run `imf encode --images DIR --out {latent_dir}` first")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}): re-run `imf encode` into a new folder") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{path} holds a {type(manifest).__name__}, not an `imf encode` manifest; re-encode")
    missing = {"codec", "latent_shape", "flip", "class_names", "shards", "counts"} - set(manifest)
    counts = manifest.get("counts")
    if "counts" not in missing and not (isinstance(counts, dict) and isinstance(counts.get("encoded"), int)):
        missing.add("counts.encoded")
    if missing:
        raise UserError(f"{path} lacks {sorted(missing)}: "
                        "it was not written by this version of `imf encode`; re-encode")
    return manifest


def dataset_summary(manifest: dict) -> dict:
    """What a model needs to know of its training data (codec, shapes, classes), without the file lists."""
    keys = ("dataset", "codec", "latent_shape", "resolution", "num_classes", "class_names", "flip", "images")
    return {k: manifest.get(k) for k in keys if k in manifest}


def shard_locations(latent_dir) -> list[Location]:
    """The shards the manifest lists (only those: a shard it does not list may be half-published)."""
    latent_dir = Location.of(latent_dir)
    files = [latent_dir.join(name) for name in read_manifest(latent_dir)["shards"]]
    written = set((latent_dir / SHARD_DIR).files(recursive=False))
    absent = [f for f in files if f.name not in written]
    if absent:
        raise UserError(f"{len(absent)} shards listed in {latent_dir / MANIFEST} are missing (e.g. {absent[0]}): "
                        "re-run the `imf encode` that wrote them")
    return files


def shard_files(latent_dir) -> list[str]:
    """shard_locations as paths or URIs."""
    return [str(f) for f in shard_locations(latent_dir)]


def read_shard(location, columns=None) -> pa.Table:
    location = Location.of(location)
    return pq.read_table(location.path, columns=columns, filesystem=location.fs)


def latent_dataset(latent_dir):
    """A ray.data.Dataset of the shards: columns index, label, moments[, moments_flip] (streamed from a bucket)."""
    import ray.data

    files = shard_locations(latent_dir)
    return ray.data.read_parquet([f.path for f in files], filesystem=files[0].fs)


def to_training_batch(batch: dict, generator: torch.Generator, latent_shape, flip: bool):
    """A batch of `iter_torch_batches(dtypes=TORCH_DTYPES)` -> (x float32 (B, C, H, W), y int64 (B,)).

    With flip, each row takes its mirrored moments with probability 1/2; then x = mean + std * noise.
    """
    c, h, w = (int(s) for s in latent_shape)
    moments = batch["moments"]
    n = len(moments)
    mean, std = moments.reshape(n, 2, c, h, w).float().unbind(1)
    if flip:
        if "moments_flip" not in batch:
            raise UserError("these latents were encoded without --flip: re-encode with `imf encode --flip`, "
                            "or train without flips")
        mirror = (torch.rand(n, generator=generator, device=generator.device) < 0.5).to(mean.device)
        mean_f, std_f = batch["moments_flip"].reshape(n, 2, c, h, w).float().unbind(1)
        mean = torch.where(mirror[:, None, None, None], mean_f, mean)
        std = torch.where(mirror[:, None, None, None], std_f, std)
    return posterior_sample(mean, std, generator), batch["label"].long()
