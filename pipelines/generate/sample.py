"""`imf sample`: 1-NFE (or k-step) generation of large image sets with Ray Data.

The index range 0..N-1 is cut into fixed shards; image i has label classes[i % len(classes)]
(class-balanced, as the FID protocol wants) and noise from a generator seeded by (seed, i),
so it is the same image whatever the number of actors. Actors (one GPU each when the cluster
has GPUs) run generator + decoder and write each shard atomically as it finishes; a re-run
into the same folder does only the missing shards. Then the parts become the output:
    --format npz      samples.npz: arr_0 uint8 (N, H, W, 3) (the ADM evaluation suite's input), labels
    --format png      images/{index:07d}.png
    --format parquet  parts/*.parquet themselves (index, label, png)
(for npz and png the parts hold raw pixels, so no PNG is encoded on the way to an .npz).
--out is a local folder or a bucket prefix (s3://...); every part is written whole (storage.py), and
manifest.json is written last.
"""

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import hooks
from ..data.images import as_rgb_uint8
from ..errors import UserError
from ..progress import Progress
from ..storage import Location, read_json, write_json

PLAN = "sample_plan.json"
PARTS = "parts"
FORMATS = ("png", "npz", "parquet")


@dataclass
class SampleSpec:
    """What `imf sample` is asked for (guidance None: the version's stored setting)."""
    model: str
    num: int
    out: str
    omega: float | None = None
    t_min: float | None = None
    t_max: float | None = None
    steps: int | None = None
    classes: str = "all"
    format: str = "npz"
    seed: int = 0
    shard_size: int = 1000
    batch_size: int = 64
    actors: int | None = None
    address: str | None = None
    tracking_uri: str | None = None

    def check(self):
        """The request's own numbers, before anything is read or written."""
        for name in ("num", "shard_size", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)} must be >= 1")
        if self.actors is not None and self.actors < 1:
            raise UserError(f"--actors {self.actors} must be >= 1")
        if self.seed < 0:
            raise UserError(f"--seed {self.seed} must be >= 0")
        if self.format not in FORMATS:
            raise UserError(f"--format {self.format!r}: choose one of {', '.join(FORMATS)}")


def labels_for(indices, classes) -> np.ndarray:
    return np.asarray(classes)[np.asarray(indices) % len(classes)]


class ShardGenerator:
    """A Ray Data actor: loads the model folder once, then generates, decodes and writes whole shards."""

    def __init__(self, folder, plan: dict, batch_size: int, out: Location, test_hooks: str | None = None):
        from imf_core import load_generator

        hooks.install(test_hooks)
        self.generator = load_generator(local_folder(Location.of(folder)))
        self.plan, self.batch_size, self.out = plan, batch_size, out

    def __call__(self, batch):
        shard = int(batch["shard"][0])
        hooks.at("sample_shard", shard=shard)
        count = generate_shard(self.generator, self.plan, shard, self.batch_size, self.out)
        return {"shard": [shard], "count": [count]}


def generate_images(generator, plan, indices, batch_size) -> np.ndarray:
    """uint8 (n, H, W, 3) images for these indices of the plan."""
    g = plan["guidance"]
    images = generator.images(plan["seed"], indices, labels_for(indices, plan["classes"]), omega=g["omega"],
                              t_min=g["t_min"], t_max=g["t_max"], steps=g["steps"], batch_size=batch_size)
    return as_rgb_uint8(images)


def generate_shard(generator, plan, shard, batch_size, out: Location) -> int:
    start = shard * plan["shard_size"]
    indices = list(range(start, min(plan["num"], start + plan["shard_size"])))
    images = generate_images(generator, plan, indices, batch_size)
    columns = {"index": pa.array(indices, pa.int64()),
               "label": pa.array(labels_for(indices, plan["classes"]), pa.int32())}
    if plan["format"] == "parquet":  # the parts are the output: self-describing PNG files
        columns["png"] = pa.array([_png(img) for img in images], pa.binary())
    else:  # raw pixels: no PNG round trip on the way to an .npz
        columns["pixels"] = pa.array([img.tobytes() for img in images], pa.binary(images[0].nbytes))
    table = pa.table(columns).replace_schema_metadata({"image_shape": json.dumps(list(images.shape[1:]))})
    with part_path(out, shard).open_output() as f:
        pq.write_table(table, f)
    return len(indices)


def local_folder(folder: Location) -> str:
    """A model folder on this node: itself, or (in a bucket) a copy in a temporary folder."""
    if folder.is_local:
        return folder.path
    import tempfile

    local = Path(tempfile.mkdtemp(prefix="imf_model_"))
    for rel in folder.files():
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        (local / rel).write_bytes(folder.join(rel).read_bytes())
    return str(local)


def upload_folder(local: Path, dst: Location) -> Location:
    """Copy a local folder (a model: a few files) to dst, file by file."""
    for path in sorted(p for p in Path(local).rglob("*") if p.is_file()):
        dst.join(path.relative_to(local).as_posix()).write_bytes(path.read_bytes())
    return dst


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def part_path(out, shard: int) -> Location:
    return Location.of(out).join(PARTS, f"shard-{shard:05d}.parquet")


def read_parts(out, num_shards):
    """(indices, labels, uint8 images) of all parts, in index order."""
    from PIL import Image

    parts = [part_path(out, s) for s in range(num_shards)]
    tables = [pq.read_table(p.path, filesystem=p.fs) for p in parts]
    shape = json.loads(tables[0].schema.metadata[b"image_shape"])
    table = pa.concat_tables(tables)
    if "pixels" in table.column_names:
        raw = b"".join(table.column("pixels").to_pylist())
        images = np.frombuffer(raw, dtype=np.uint8).reshape(-1, *shape)
    else:
        images = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))
                           for b in table.column("png").to_pylist()])
    return table.column("index").to_numpy(), table.column("label").to_numpy(), images


def finalize(plan: dict, out: Location) -> Location:
    num_shards = num_shards_of(plan)
    if plan["format"] == "parquet":
        return out / PARTS
    indices, labels, images = read_parts(out, num_shards)
    assert np.array_equal(indices, np.arange(plan["num"])), "parts do not cover 0..N-1 exactly once"
    if plan["format"] == "npz":
        buffer = io.BytesIO()
        np.savez(buffer, arr_0=images, labels=labels)
        return (out / "samples.npz").write_bytes(buffer.getvalue())
    folder = out / "images"
    done = set(folder.files(recursive=False))
    for i, image in zip(indices, images):
        if f"{i:07d}.png" not in done:
            folder.join(f"{i:07d}.png").write_bytes(_png(image))
    return folder


def num_shards_of(plan) -> int:
    return -(-plan["num"] // plan["shard_size"])


def parse_classes(text: str, num_classes: int) -> list[int]:
    if text == "all":
        return list(range(num_classes))
    try:
        classes = [int(c) for c in text.split(",")]
    except ValueError:
        raise UserError(f"--classes {text!r}: 'all' or comma-separated class indices") from None
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise UserError(f"--classes: {bad} outside 0..{num_classes - 1} (this model has {num_classes} classes)")
    return classes


def resolve_guidance(given: dict, config: dict, version) -> dict:
    """omega, t_min, t_max, steps: the given values (None: not given), else the version's stored setting, else
    the folder's; checked. The server fills a request's guidance the same way."""
    from ..models.registry import version_guidance

    stored = {**config.get("guidance", {}), **(version_guidance(version) if version is not None else {})}
    defaults = {"omega": 1.0, "t_min": 0.0, "t_max": 1.0, "steps": 1}
    guidance = {k: given.get(k) if given.get(k) is not None else stored.get(k, defaults[k]) for k in defaults}
    guidance["steps"] = int(guidance["steps"])
    if not (guidance["omega"] >= 1 and 0 <= guidance["t_min"] <= guidance["t_max"] <= 1 and guidance["steps"] >= 1):
        raise UserError(f"guidance {guidance}: need omega >= 1, 0 <= t_min <= t_max <= 1, steps >= 1")
    return guidance


def make_plan(spec: SampleSpec, config: dict, version) -> dict:
    """The request as written to sample_plan.json: guidance resolved (flags, else the version's stored
    setting, else the folder's), classes, shards."""
    given = {"omega": spec.omega, "t_min": spec.t_min, "t_max": spec.t_max, "steps": spec.steps}
    guidance = resolve_guidance(given, config, version)
    return {"model": spec.model, "model_name": getattr(version, "name", None),
            "version": getattr(version, "version", None), "num": spec.num, "seed": spec.seed,
            "classes": parse_classes(spec.classes, config["num_classes"]), "guidance": guidance,
            "format": spec.format, "shard_size": spec.shard_size, "out": str(Location.of(spec.out))}


def run_sample(spec: SampleSpec) -> dict:
    """Generate (or finish generating) the request into spec.out; returns the written manifest."""
    from ..runtime import probe_cluster

    spec.check()
    probe_cluster(spec.address)  # a dead --address before anything is written
    out = Location.of(spec.out).check_writable("--out")
    plan, folder, version = _plan_and_model(spec, out)
    write_json(out / PLAN, plan)
    total = num_shards_of(plan)
    written = set((out / PARTS).files(recursive=False))
    missing = [s for s in range(total) if part_path(out, s).name not in written]
    g = plan["guidance"]
    print(f"imf sample: {plan['num']} images of {len(plan['classes'])} classes from {spec.model} "
          f"(omega {g['omega']}, interval [{g['t_min']}, {g['t_max']}], {g['steps']} step(s)); "
          f"{total - len(missing)} of {total} shards already done", flush=True)
    if missing:
        (out / "manifest.json").delete()
        generate(plan, folder, missing, spec, out)
    result = finalize(plan, out)
    manifest = {**plan, "output": str(result), "model_folder": str(folder),
                "tracking_uri": spec.tracking_uri if version is not None else None}
    write_json(out / "manifest.json", manifest)  # last: its presence means the set is complete
    print(f"imf sample: {plan['num']} images -> {result}")
    return manifest


def _plan_and_model(spec: SampleSpec, out: Location):
    """(plan, model folder the actors read, registry version or None); refuses an --out of another request."""
    import shutil
    import tempfile

    from ..models.registry import model_folder

    with tempfile.TemporaryDirectory(prefix="imf_model_") as tmp:
        folder, version = model_folder(spec.model, spec.tracking_uri, dst=tmp)
        config = json.loads((folder / "config.json").read_text())
        plan = make_plan(spec, config, version)
        previous = out / PLAN
        if previous.is_file():
            old = read_json(previous)
            if {k: v for k, v in old.items() if k != "out"} != {k: v for k, v in plan.items() if k != "out"}:
                raise UserError(f"{out} holds samples of another request ({_diff(old, plan)}): re-run with the "
                                "same arguments to finish it, or pass a new --out")
        if version is not None:  # the actors read the folder from the output, a place every node sees
            if out.is_local:
                local = out.local_path() / "model_download"
                shutil.rmtree(local, ignore_errors=True)
                folder = Location.of(shutil.copytree(folder, local))
            else:
                folder = upload_folder(folder, out / "model_download")
    return plan, Location.of(folder), version


def generate(plan, folder: Location, missing, spec: SampleSpec, out: Location):
    import ray

    from ..runtime import start_ray

    start_ray(spec.address)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = int(ray.cluster_resources().get("CPU", 1))
    size = max(1, min(len(missing), spec.actors or gpus or max(1, cpus // 2)))
    per_actor = {"num_gpus": 1} if gpus else {"num_cpus": 1}
    ds = ray.data.from_items([{"shard": s} for s in missing], override_num_blocks=len(missing))
    ds = ds.map_batches(ShardGenerator, batch_size=1, compute=ray.data.ActorPoolStrategy(size=size), **per_actor,
                        fn_constructor_kwargs={"folder": folder, "plan": plan, "out": out,
                                               "batch_size": spec.batch_size, "test_hooks": hooks.current()})
    todo = sum(min(plan["shard_size"], plan["num"] - s * plan["shard_size"]) for s in missing)
    print(f"imf sample: {size} {'GPU' if gpus else 'CPU'} actor(s) for {len(missing)} shard(s)", flush=True)
    progress, done, images = Progress("sample", todo, "images", every_s=5), 0, 0
    for row in ds.iter_rows():
        done, images = done + 1, images + int(row["count"])
        progress.update(images, f"shards {done}/{len(missing)}", force=done == len(missing))


def _diff(old, new):
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in new if k != "out" and old.get(k) != new.get(k))


def register(steps):
    from ..cli import add_shared_flags, spec_from_args

    parser = steps.add_parser("sample", help="generate images (1-NFE by default) from a registered model")
    parser.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION, or a model folder")
    parser.add_argument("--num", type=int, required=True, help="number of images")
    parser.add_argument("--out", required=True, help="output folder or bucket prefix (s3://...); re-run into it to "
                        "finish an interrupted job")
    parser.add_argument("--omega", type=float, default=None, help="CFG scale (default: the version's best setting)")
    parser.add_argument("--t-min", type=float, default=None)
    parser.add_argument("--t-max", type=float, default=None)
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default 1)")
    parser.add_argument("--classes", default="all", help="'all' or comma-separated class indices")
    parser.add_argument("--format", choices=FORMATS, default="npz")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard-size", type=int, default=1000, help="images per written shard")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--actors", type=int, default=None, help="default: one per GPU, else half the CPUs")
    add_shared_flags(parser, address=True, tracking=lambda args: str(args.model).startswith("models:/"))
    parser.set_defaults(func=lambda args: run_sample(spec_from_args(SampleSpec, args)),
                        on_stop="the shards written are kept: re-run the same command to finish")
