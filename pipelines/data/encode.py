"""`imf encode`: images (class folders, WebDataset tars or Parquet; sources.py) -> Parquet shards of
posterior moments, with Ray Data. Input and output are local folders or bucket prefixes alike.

The file list (numbered, see sources.py) is cut into shards of `shard_size` consecutive
files; shard k always holds the files k*shard_size ... (k+1)*shard_size - 1, so a re-run
into the same folder knows which shards exist and encodes only the missing ones. The
Ray Data job streams one row per missing shard through two stages:
    decode (CPU tasks): read, convert to RGB and centre-crop the shard's images, note rejects
    encode (actor pool: one GPU each, or CPU actors): codec moments (and mirrored ones), then
            write the shard whole (local: temporary name, then rename; a bucket: one upload)
The manifest is written last; nothing reads a shard that it does not list.
Shards are written by the actors rather than by Dataset.write_parquet because a shard must
be one fixed set of files to be resumable; the driver only receives one small row per shard.
Format and reader: shards.py.
"""

import hashlib
import itertools
import json
import math
import sys
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from imf_core.codecs import CODECS, codec_from_description, make_codec

from .. import hooks
from ..errors import UserError
from ..progress import Progress
from ..storage import Location, read_json, write_json
from .images import CROP, DATASET_MARKER
from .shards import MANIFEST, PLAN, SHARD_DIR, moments_array, shard_metadata, shard_path, shard_table, write_shard
from .sources import FORMATS, decode_shard_row, list_images

DEFAULT_SHARD_SIZE = 512
DEFAULT_VAE = "stabilityai/sd-vae-ft-mse"
COMPARED = ("format", "codec", "resolution", "crop", "latent_shape", "flip", "shard_size", "class_names", "files",
            "files_sha256")


@dataclass
class Plan:
    images: Location
    out: Location
    class_names: list
    files: list  # [(reference, label)], index = position (sources.py)
    codec: dict  # codec.describe()
    resolution: int
    latent_shape: list
    flip: bool
    shard_size: int
    dataset: str = ""  # what the images are (names MLflow experiments): the tree's marker, or its folder name
    existing: set = field(default_factory=set)
    format: str = "folders"
    where: list = field(default_factory=list)  # per file: (offset, size) in its tar, or (row, 0) in its Parquet file
    image_column: str | None = None
    single: bool = False  # --images is one tar or Parquet file

    @property
    def source(self) -> dict:
        """What decode tasks need to read the images."""
        return {"root": self.images, "format": self.format, "image_column": self.image_column, "single": self.single}

    @property
    def num_shards(self) -> int:
        return -(-len(self.files) // self.shard_size)

    @property
    def missing(self) -> list:
        return [k for k in range(self.num_shards) if k not in self.existing]

    @cached_property
    def files_sha256(self) -> str:
        return hashlib.sha256("\n".join(f"{p}\t{label}" for p, label in self.files).encode()).hexdigest()

    def settings(self) -> dict:
        return {"images": str(self.images), "format": self.format, "codec": self.codec, "resolution": self.resolution,
                "crop": CROP, "latent_shape": self.latent_shape, "flip": self.flip, "shard_size": self.shard_size,
                "class_names": self.class_names, "files": len(self.files), "files_sha256": self.files_sha256}

    def shard_meta(self) -> dict:
        """What every shard's b"imf" metadata shares."""
        settings = self.settings()
        return {key: settings[key] for key in ("codec", "resolution", "crop", "latent_shape", "flip", "class_names")}


def _describe(settings: dict) -> str:
    codec = settings["codec"]
    return (f"codec {codec['codec']}{' ' + codec['weights'] if codec.get('weights') else ''}, "
            f"resolution {settings['resolution']}, flip {settings['flip']}, shard size {settings['shard_size']}, "
            f"{settings['files']} files in {len(settings['class_names'])} classes")


def plan_encode(images, out, codec: str = "pixels", vae=None, resolution: int = 256, flip: bool = False,
                shard_size: int | None = None, grayscale: bool = False, format: str | None = None,
                image_column: str | None = None, label_column: str | None = None) -> Plan:
    """Check every input and the output folder, before Ray starts; raises UserError. Writes nothing
    (only removes temporary files of writes that a killed run left in a local `out`)."""
    images, out = Location.of(images), Location.of(out).check_writable("--out")
    check_apart(images, out)
    if resolution < 1:
        raise UserError(f"--resolution {resolution} must be a positive number of pixels (e.g. 256)")
    listing = list_images(images, format, image_column, label_column)
    model, latent_shape = _codec(codec, vae, resolution, grayscale)
    warning = resolution_warning(model, resolution)
    if warning:
        print(f"imf encode: warning: {warning}", file=sys.stderr, flush=True)
    before = _previous_plan(out)
    shard_size = shard_size or (before or {}).get("shard_size")
    plan = Plan(images, out, listing.class_names, listing.files, model.describe(), resolution, latent_shape, flip,
                shard_size or DEFAULT_SHARD_SIZE, dataset=dataset_name(images), format=listing.format,
                where=listing.where, image_column=listing.image_column, single=images.is_file())
    if plan.shard_size < 1:
        raise UserError(f"--shard-size {plan.shard_size} must be at least 1")
    if before is not None:
        now = plan.settings()
        changed = [key for key in COMPARED if before.get(key, "folders" if key == "format" else None) != now[key]]
        if changed:
            raise UserError(f"--out {out} holds an encode with other settings (changed: {', '.join(changed)}): "
                            f"it has {_describe(before)}; this run asks for {_describe(now)}. "
                            f"Choose another --out, or delete {out} to start over")
        plan.existing = _complete_shards(plan)
    return plan


def _tree(location: Location) -> tuple[str, PurePosixPath]:
    """(store, path) of a Location, comparable with another's: local paths resolved through links, bucket paths
    with their scheme and endpoint."""
    if location.is_local:
        return "local", PurePosixPath(Path(location.path).resolve().as_posix())
    scheme = location.uri.split("://", 1)[0].lower()
    scheme = {"s3a": "s3"}.get(scheme, scheme)
    return f"{scheme} {location.endpoint}", PurePosixPath("/" + location.path.strip("/"))


def check_apart(images: Location, out: Location):
    """--out inside --images would put shards, manifest and plan into the image tree, where the next encode reads
    them as images; --images inside --out would be deleted with it when a changed encode asks to start over."""
    (images_store, images_path), (out_store, out_path) = _tree(images), _tree(out)
    if images_store != out_store:
        return
    if out_path == images_path:
        raise UserError(f"--out {out} is the --images folder: the shards, manifest and plan would be written into "
                        "the image tree; choose an --out outside --images")
    if out_path.is_relative_to(images_path):
        raise UserError(f"--out {out} lies inside --images {images}: the shards, manifest and plan would be written "
                        "into the image tree, and the next encode of it would read them as images; choose an --out "
                        "outside --images")
    if images_path.is_relative_to(out_path):
        raise UserError(f"--images {images} lies inside --out {out}: the encode would write among the images, and "
                        "deleting --out to start over would delete them; choose an --out that does not hold --images")


def resolution_warning(codec, resolution: int) -> str | None:
    """What a shipped config cannot train on at this resolution (a model's patch size must divide the latent
    side; the codec itself refuses what it cannot encode), or None."""
    from ..config import CONFIGS, load_config, patch_size

    side = codec.latent_shape(resolution)[-1]
    patches = {path.stem: patch_size(load_config(path)) for path in sorted(CONFIGS.glob("*.yaml"))}
    unfit = {name: patch for name, patch in patches.items() if side % patch}
    if not unfit:
        return None
    which = "no shipped config can" if len(unfit) == len(patches) else f"the shipped {', '.join(unfit)} cannot"
    by_patch = {patch: [name for name, p in unfit.items() if p == patch] for patch in sorted(set(unfit.values()))}
    sizes = ", ".join(f"{patch} ({', '.join(names)})" for patch, names in by_patch.items())
    divisors = ", ".join(str(d) for d in range(1, side + 1) if side % d == 0)
    better = _fitting_resolution(codec, resolution, math.lcm(*patches.values()))
    return (f"--resolution {resolution} gives {side}x{side} latents, which {which} train on: their patch size {sizes} "
            f"does not divide {side}. Encode at --resolution {better}, or train with --set "
            f"model.overrides.patch_size=P for P in {divisors}")


def _fitting_resolution(codec, resolution: int, multiple: int) -> int:
    """The next resolution above `resolution` that the codec takes and whose latent side `multiple` divides."""
    for candidate in itertools.count(resolution + 1):
        try:
            if codec.latent_shape(candidate)[-1] % multiple == 0:
                return candidate
        except ValueError:  # a resolution the codec cannot encode
            continue


def _codec(codec: str, vae, resolution: int, grayscale: bool):
    """(codec, latent shape) for the flags; UserError for missing weights or a resolution it cannot take."""
    if codec == "sd-vae" and not vae:
        vae = DEFAULT_VAE
    if vae and Path(vae).is_dir():
        vae = str(Path(vae).absolute())  # Ray workers do not share the driver's working directory
    try:
        model = make_codec(codec, weights=vae, channels=1 if grayscale else 3)
        return model, list(model.latent_shape(resolution))
    except FileNotFoundError as err:
        raise UserError(f"--vae: {err}") from None
    except ValueError as err:
        raise UserError(f"--codec {codec} --resolution {resolution}: {err}") from None


def _previous_plan(out: Location) -> dict | None:
    """The plan of an earlier encode into `out`, or None; UserError for a file, a damaged plan or foreign shards."""
    if out.is_file():
        raise UserError(f"--out {out} is a file: pass a folder for the shards")
    previous = out / PLAN
    if previous.is_file():
        try:
            return read_json(previous)
        except json.JSONDecodeError:
            raise UserError(f"{previous} is damaged: delete {out} to start over, or choose another --out") from None
    if any(f.endswith(".parquet") for f in (out / SHARD_DIR).files()) or (out / MANIFEST).exists():
        raise UserError(f"--out {out} holds shards without {PLAN} (not written by this `imf encode`): "
                        "choose another --out, or empty it")
    return None


def dataset_name(images: Location) -> str:
    """The name a tree gives itself in `.imf_dataset.json` (`imf data` writes one), else its folder's name."""
    try:
        return str(read_json(images / DATASET_MARKER)["dataset"])
    except (OSError, ValueError, KeyError, TypeError):
        name = images.name
        return name.rsplit(".", 1)[0] if images.is_file() else name


def _complete_shards(plan: Plan) -> set:
    """Shards already written with readable metadata; leftovers of killed local writes are removed."""
    done = set()
    if plan.out.is_local:
        for leftover in (plan.out.local_path() / SHARD_DIR).glob(".shard-*.tmp-*"):
            leftover.unlink(missing_ok=True)
    written = set((plan.out / SHARD_DIR).files(recursive=False))
    for k in range(plan.num_shards):
        path = shard_path(plan.out, k)
        try:
            if path.name in written and shard_metadata(path).get("shard") == k:
                done.add(k)
        except Exception:  # unreadable footer: encode it again
            pass
    return done


def encode_pixels(codec, pixels: np.ndarray, batch_size: int, flip: bool):
    """uint8 (N, R, R, 3) -> (moments, mirrored moments or None, per-channel sums of the means); N > 0."""
    images = torch.tensor(pixels).permute(0, 3, 1, 2)  # a copy: Ray hands over read-only arrays
    if getattr(codec, "channels", 3) == 1:  # ITU-R 601 luma, as Pillow's convert("L")
        luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        images = (images.float() * luma).sum(1, keepdim=True).round()
    parts = {"mean": [], "std": [], "mean_f": [], "std_f": []}
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].float() / 127.5 - 1.0
        for suffix, view in [("", x), ("_f", x.flip(3))][: 2 if flip else 1]:
            mean, std = codec.encode(view)
            parts["mean" + suffix].append(mean.cpu())
            parts["std" + suffix].append(std.cpu())
    full = {key: torch.cat(value).numpy() for key, value in parts.items() if value}
    mean = torch.from_numpy(full["mean"]).double()
    stats = {"count": mean.numel() // mean.shape[1], "sum": mean.sum((0, 2, 3)).tolist(),
             "sumsq": mean.square().sum((0, 2, 3)).tolist()}
    flipped = moments_array(full["mean_f"], full["std_f"]) if flip else None
    return moments_array(full["mean"], full["std"]), flipped, stats


def write_encoded_shard(codec, out, meta: dict, shard: int, decoded: dict, batch_size: int) -> int:
    """Encode one decoded shard (see datasets.decode_shard) and write it; -> images encoded."""
    if len(decoded["pixels"]):
        moments, flipped, stats = encode_pixels(codec, decoded["pixels"], batch_size, meta["flip"])
    else:  # every image of the shard was rejected: an empty shard still records them
        empty = np.zeros((0, int(np.prod(meta["latent_shape"]))), np.float32)
        moments, stats = moments_array(empty, empty), {"count": 0}
        flipped = moments if meta["flip"] else None
    encoded = len(decoded["index"])
    meta = {**meta, "shard": shard, "encoded": encoded, "rejects": decoded["rejects"], "stats": stats}
    write_shard(shard_path(out, shard), shard_table(decoded["index"], decoded["label"], moments, flipped, meta))
    return encoded


class ShardEncoder:
    """Ray Data actor: encodes whole shards with one codec replica and writes them."""

    def __init__(self, out: Location, meta: dict, batch_size: int, dtype: str, test_hooks: str | None = None):
        hooks.install(test_hooks)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.codec = codec_from_description(meta["codec"], self.device, dtype=getattr(torch, dtype))
        self.out, self.meta, self.batch_size = out, meta, batch_size

    def __call__(self, batch: dict) -> dict:
        shard = int(batch["shard"][0])
        hooks.at("encode_shard", shard=shard)
        decoded = {"index": batch["index"][0], "label": batch["label"][0], "pixels": batch["pixels"][0],
                   "rejects": json.loads(batch["rejects"][0])}
        encoded = write_encoded_shard(self.codec, self.out, self.meta, shard, decoded, self.batch_size)
        return {"shard": [shard], "encoded": [encoded], "rejected": [len(decoded["rejects"])]}


def actor_pool(num_shards: int, actors: int | None = None) -> tuple[int, dict]:
    """(pool size, resources per actor): one GPU each when the cluster has GPUs, else 2 CPUs each for
    half of the CPUs. Resources unlike the 1-CPU decode tasks also keep Ray Data from fusing the two
    stages, which would decode inside the few codec actors; under 4 CPUs they share 1-CPU actors,
    since a 2-CPU actor would leave no CPU to decode on."""
    import ray

    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    size = actors or gpus or max(1, cpus // 4)
    per_actor = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 2 if cpus >= 4 else 1}
    return max(1, min(size, num_shards)), per_actor


def encode_dataset(plan: Plan, missing: list, size: int, per_actor: dict, batch_size: int, dtype: str):
    """The Ray Data job: one row per missing shard -> decode tasks -> codec actors that write the shards."""
    import ray

    rows = []
    for k in missing:
        index = range(k * plan.shard_size, min((k + 1) * plan.shard_size, len(plan.files)))
        rows.append({"shard": k, "index": list(index), "path": [plan.files[i][0] for i in index],
                     "label": [plan.files[i][1] for i in index], "offset": [int(plan.where[i][0]) for i in index],
                     "size": [int(plan.where[i][1]) for i in index]})
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    ds = ds.map_batches(decode_shard_row, batch_size=1, num_cpus=1,
                        fn_kwargs={"source": plan.source, "resolution": plan.resolution})
    return ds.map_batches(ShardEncoder, batch_size=1, compute=ray.data.ActorPoolStrategy(size=size), **per_actor,
                          fn_constructor_kwargs={"out": plan.out, "meta": plan.shard_meta(),
                                                 "batch_size": batch_size, "dtype": dtype,
                                                 "test_hooks": hooks.current()})


def say(message: str):
    print(message, flush=True)


def run_encode(plan: Plan, address=None, actors: int | None = None, batch_size: int = 64,
               dtype: str = "float32") -> dict:
    """Encode the plan's missing shards on Ray, then write manifest.json. -> summary counts."""
    from ..runtime import probe_cluster

    probe_cluster(address)  # a dead --address before anything is written
    write_json(plan.out / PLAN, plan.settings())
    missing = plan.missing
    if missing:
        (plan.out / MANIFEST).delete()
    say(f"imf encode: {len(plan.files)} files in {len(plan.class_names)} classes -> {plan.num_shards} shards of "
        f"{plan.shard_size}; {len(plan.existing)} already done, {len(missing)} to encode "
        f"({_describe(plan.settings())})")
    start, encoded, rejected, first = time.time(), 0, 0, None
    if missing:
        from ..runtime import start_ray

        start_ray(address)
        start = time.time()
        size, per_actor = actor_pool(len(missing), actors)
        ds = encode_dataset(plan, missing, size, per_actor, batch_size, dtype)
        device = "GPU" if per_actor.get("num_gpus") else "CPU"
        say(f"imf encode: {size} {device} codec actor(s), decoding on the cluster's CPUs")
        todo = sum(min(plan.shard_size, len(plan.files) - k * plan.shard_size) for k in missing)
        progress, done = Progress("encode", todo, "images", every_s=5), 0
        for row in ds.iter_rows():
            done, encoded, rejected = done + 1, encoded + int(row["encoded"]), rejected + int(row["rejected"])
            first = first or (time.time() - start, encoded)
            progress.update(encoded + rejected, f"shards {done}/{len(missing)}  rejected {rejected}",
                            force=done == len(missing))
    seconds = time.time() - start
    manifest = write_manifest(plan)
    counts = manifest["counts"]
    for reject in manifest["rejects"][:5]:
        say(f"  rejected {reject['path']}: {reject['reason']}")
    if counts["rejected"] > 5:
        say(f"  ... {counts['rejected'] - 5} more rejects listed in {plan.out / MANIFEST}")
    say(f"imf encode: {counts['encoded']} images encoded, {counts['rejected']} rejected; this run encoded {encoded} in "
        f"{seconds:.1f} s ({encoded / max(seconds, 1e-9):.1f} images/s) -> {plan.out / MANIFEST}")
    return {"encoded": counts["encoded"], "rejected": counts["rejected"], "encoded_this_run": encoded,
            "rejected_this_run": rejected, "shards_this_run": len(missing), "seconds": seconds,
            "first_shard": first}  # (seconds, images) when the first shard was written: start-up cost


def write_manifest(plan: Plan) -> dict:
    """Gather every shard's metadata into manifest.json (written last: its presence marks completion)."""
    shards, rejects, encoded = [], [], 0
    count, total, total_sq = 0, np.zeros(plan.latent_shape[0]), np.zeros(plan.latent_shape[0])
    for k in range(plan.num_shards):
        path = shard_path(plan.out, k)
        meta = shard_metadata(path)
        shards.append(f"{SHARD_DIR}/{path.name}")
        rejects += meta["rejects"]
        encoded += meta["encoded"]
        if meta["stats"]["count"]:
            count += meta["stats"]["count"]
            total += meta["stats"]["sum"]
            total_sq += meta["stats"]["sumsq"]
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean**2, 0))
    settings = plan.settings()
    manifest = {"format": "imf-latents/1", "dataset": plan.dataset,
                **{k: settings[k] for k in ("images", "codec", "resolution", "crop",
                                            "latent_shape", "flip", "class_names")},
                "num_classes": len(plan.class_names), "shard_size": plan.shard_size,
                "counts": {"encoded": encoded, "rejected": len(rejects), "files": len(plan.files)},
                "latent_stats": {"mean": mean.tolist(), "std": std.tolist()},
                "rejects": rejects, "shards": shards}
    write_json(plan.out / MANIFEST, manifest)
    return manifest


def _main(args):
    for flag, value in (("--shard-size", args.shard_size), ("--batch-size", args.batch_size),
                        ("--actors", args.actors)):
        if value is not None and value < 1:
            raise UserError(f"{flag} {value} must be >= 1")
    plan = plan_encode(args.images, args.out, codec=args.codec, vae=args.vae, resolution=args.resolution,
                       flip=args.flip, shard_size=args.shard_size, grayscale=args.grayscale, format=args.format,
                       image_column=args.image_column, label_column=args.label_column)
    if args.tracking_uri:
        from ..tracking import connect

        connect(args.tracking_uri)  # an unreachable store is an error before any work starts
    summary = run_encode(plan, address=args.address, actors=args.actors, batch_size=args.batch_size,
                         dtype=args.dtype)
    if args.tracking_uri:
        log_encode(args.tracking_uri, plan, summary)


def log_encode(tracking_uri, plan: Plan, summary: dict):
    """One MLflow run in experiment imf/encode: the settings, the counts and the manifest."""
    from ..tracking import TolerantLogger, connect, experiment_id

    client, uri = connect(tracking_uri)
    settings = plan.settings()
    run = client.create_run(experiment_id(client, "imf/encode", uri), run_name=f"encode-{plan.out.name}",
                            tags={"imf.latents": str(plan.out)})
    for key in ("images", "resolution", "flip", "shard_size", "files"):
        client.log_param(run.info.run_id, key, settings[key])
    client.log_param(run.info.run_id, "codec", json.dumps(settings["codec"]))
    logger = TolerantLogger(uri, run.info.run_id)
    seconds = summary["seconds"]
    logger.metrics({"encoded": summary["encoded"], "rejected": summary["rejected"],
                    "images_per_s": summary["encoded_this_run"] / max(seconds, 1e-9)}, step=0)
    if plan.out.is_local:
        logger.artifact(plan.out.local_path() / MANIFEST)
    else:
        logger.dict(read_json(plan.out / MANIFEST), MANIFEST)
    logger.terminate("FINISHED")


def register(steps):
    from ..cli import add_shared_flags

    parser = steps.add_parser("encode", help="encode images (class folders, WebDataset tars, Parquet) to latent "
                              "Parquet shards (Ray Data)")
    parser.add_argument("--images", required=True, help="a folder or bucket prefix (s3://..., gs://...): one "
                        "sub-folder per class (ImageNet's train layout), WebDataset .tar shards, or Parquet files")
    parser.add_argument("--format", choices=FORMATS, default=None, help="layout of --images (default: detected)")
    parser.add_argument("--image-column", default=None, help="parquet: the image-bytes column (default: detected)")
    parser.add_argument("--label-column", default=None, help="parquet: the class-index column (default: label, ...)")
    parser.add_argument("--out", required=True, help="output folder or bucket prefix; re-run into it to finish an "
                        "interrupted encode")
    parser.add_argument("--codec", choices=list(CODECS), default="sd-vae")
    parser.add_argument("--vae", default=None,
                        help="sd-vae weights: a save_pretrained folder or a hub id already in the local cache "
                             f"(default {DEFAULT_VAE})")
    parser.add_argument("--resolution", type=int, default=256, help="side of the ADM centre crop, in pixels")
    parser.add_argument("--flip", action="store_true", help="also store the moments of the mirrored images")
    parser.add_argument("--grayscale", action="store_true", help="pixels codec: one luma channel instead of RGB")
    parser.add_argument("--shard-size", type=int, default=None,
                        help=f"images per shard (default {DEFAULT_SHARD_SIZE}, or the interrupted run's)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per codec forward pass")
    parser.add_argument("--actors", type=int, default=None, help="codec actors (default: one per GPU, else CPUs/4)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="VAE precision")
    add_shared_flags(parser, address=True, tracking=lambda args: False)  # logs a run only when given a URI
    parser.set_defaults(func=_main, on_stop="the shards written are kept: re-run the same command to finish")
