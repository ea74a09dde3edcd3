"""The damaged data sets of tests/pipelines/test_damaged_corpus.py, generated: latent sets for `imf train` and
sample folders and references for `imf evaluate`. Each case is (id, inputs, needles): the refusal's message must
contain every needle (the damaged file's name, and what is wrong with it). Truncation offsets are drawn from a
seeded generator, so a failure names a case that can be made again."""

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipelines.data.shards import METADATA_KEY, read_shard
from tests.pipelines.latent_sets import write_latent_set

SEED = 30
TRUNCATIONS = 12  # random offsets per truncated file, besides the first and last byte

SHARD0, SHARD1 = "shards/shard-00000.parquet", "shards/shard-00001.parquet"


# ---- latent sets -------------------------------------------------------------------------------------------

def truncate(path: Path, size: int):
    with open(path, "r+b") as f:
        f.truncate(size)


def offsets(path: Path, rng) -> list[int]:
    size = path.stat().st_size
    return sorted({0, size - 1, *(int(x) for x in rng.integers(1, size - 1, TRUNCATIONS))})


def rewrite_shard(folder: Path, name: str, change):
    """Replace a shard by change(its table), keeping (or as change leaves) its imf metadata."""
    path = folder / name
    table = change(read_shard(path))
    pq.write_table(table, path)


def with_column(table: pa.Table, name: str, values) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


def with_meta(table: pa.Table, **changes) -> pa.Table:
    meta = json.loads(table.schema.metadata[METADATA_KEY])
    return table.replace_schema_metadata({METADATA_KEY: json.dumps({**meta, **changes}).encode()})


def moments_as(table: pa.Table, value_type) -> pa.Array:
    column = table.column("moments").combine_chunks()
    return pa.FixedSizeListArray.from_arrays(column.flatten().cast(value_type), column.type.list_size)


def edit_manifest(folder: Path, **changes):
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    for key, value in changes.items():
        if key == "encoded":
            manifest["counts"]["encoded"] = value
        else:
            manifest[key] = value
    path.write_text(json.dumps(manifest))


def other_schema_file(path: Path):
    pq.write_table(pa.table({"png": pa.array([b"x"] * 4, pa.binary()), "label": pa.array([0, 1, 2, 3])}), path)


def latent_damages(base: Path, rng):
    """(id, change(folder), needles) for every kind of damage to a latent set written by write_latent_set."""
    shard1 = base / SHARD1
    cases = [(f"truncated-at-{n}", lambda d, n=n: truncate(d / SHARD1, n), ["shard-00001.parquet", "cut short"])
             for n in offsets(shard1, rng)]
    cases += [
        ("zero-byte-shard", lambda d: truncate(d / SHARD0, 0), ["shard-00000.parquet", "not a readable Parquet"]),
        ("text-for-a-shard", lambda d: (d / SHARD0).write_text("hello\n"), ["shard-00000.parquet", "not a readable"]),
        ("png-for-a-shard", lambda d: Image.new("L", (8, 8)).save(d / SHARD0, format="PNG"),
         ["shard-00000.parquet", "not a readable"]),
        ("swapped-schema-sample-shard", lambda d: other_schema_file(d / SHARD1),
         ["shard-00001.parquet", "lacks column(s) index, moments"]),
        ("swapped-schema-table", lambda d: pq.write_table(pa.table({"x": [1.0], "y": ["a"]}), d / SHARD0),
         ["shard-00000.parquet", "not a shard of this latent set"]),
        ("moments-float32", lambda d: rewrite_shard(d, SHARD0, lambda t: with_column(
            t, "moments", moments_as(t, pa.float32()))), ["shard-00000.parquet", "column moments", "float"]),
        ("moments-variable-list", lambda d: rewrite_shard(d, SHARD0, lambda t: with_column(
            t, "moments", t.column("moments").cast(pa.list_(pa.float16())))), ["shard-00000.parquet", "moments"]),
        ("moments-of-another-shape", lambda d: rewrite_shard(d, SHARD1, lambda t: with_column(
            t, "moments", pa.FixedSizeListArray.from_arrays(moments_as(t, pa.float16()).flatten()[: 16 * 64], 64))),
         ["shard-00001.parquet", "column moments", "[64]", "latent_shape [1, 8, 8]"]),
        ("index-int32", lambda d: rewrite_shard(d, SHARD0, lambda t: with_column(
            t, "index", t.column("index").cast(pa.int32()))), ["shard-00000.parquet", "column index is int32"]),
        ("index-string", lambda d: rewrite_shard(d, SHARD0, lambda t: with_column(
            t, "index", t.column("index").cast(pa.string()))), ["shard-00000.parquet", "column index"]),
        ("label-int64", lambda d: rewrite_shard(d, SHARD1, lambda t: with_column(
            t, "label", t.column("label").cast(pa.int64()))), ["shard-00001.parquet", "column label is int64"]),
        ("label-float", lambda d: rewrite_shard(d, SHARD1, lambda t: with_column(
            t, "label", t.column("label").cast(pa.float32()))), ["shard-00001.parquet", "column label"]),
        ("label-column-missing", lambda d: rewrite_shard(d, SHARD0, lambda t: t.drop_columns(["label"])),
         ["shard-00000.parquet", "lacks column(s) label"]),
        ("extra-column", lambda d: rewrite_shard(d, SHARD0, lambda t: t.append_column("weight", pa.array(
            np.ones(len(t))))), ["shard-00000.parquet", "has column(s) weight"]),
        ("flip-column-not-in-manifest", lambda d: rewrite_shard(d, SHARD0, lambda t: t.append_column(
            "moments_flip", t.column("moments"))), ["shard-00000.parquet", "moments_flip", "flip: false"]),
        ("flip-in-manifest-not-in-shards", lambda d: edit_manifest(d, flip=True),
         ["shard-00000.parquet", "lacks column(s) moments_flip", "flip: true"]),
        ("no-imf-metadata", lambda d: rewrite_shard(d, SHARD1, lambda t: t.replace_schema_metadata(None)),
         ["shard-00001.parquet", "not written by `imf encode`"]),
        ("shard-of-another-codec", lambda d: rewrite_shard(d, SHARD1, lambda t: with_meta(
            t, codec={"codec": "sd-vae", "weights": "stabilityai/sd-vae-ft-mse"})),
         ["shard-00001.parquet", "codec", "another encode"]),
        ("shard-of-another-shape-metadata", lambda d: rewrite_shard(d, SHARD0, lambda t: with_meta(
            t, latent_shape=[4, 4, 4])), ["shard-00000.parquet", "latent_shape", "another encode"]),
        ("rows-disagree-with-shard-metadata", lambda d: rewrite_shard(d, SHARD0, lambda t: t.slice(0, 9)),
         ["shard-00000.parquet", "9 rows", "16"]),
        ("labels-out-of-range", lambda d: rewrite_shard(d, SHARD1, lambda t: with_column(
            t, "label", pa.array(np.arange(len(t), dtype=np.int32)))), ["shard-00001.parquet", "outside", "4 classes"]),
        ("negative-labels", lambda d: rewrite_shard(d, SHARD0, lambda t: with_column(
            t, "label", pa.array(-np.ones(len(t), dtype=np.int32)))), ["shard-00000.parquet", "labels from -1"]),
        ("shard-missing", lambda d: (d / SHARD1).unlink(), ["shard-00001.parquet", "missing"]),
        ("every-shard-missing", lambda d: shutil.rmtree(d / "shards"), ["2 problems", "shard-00000", "shard-00001"]),
        ("extra-shard", lambda d: shutil.copy(d / SHARD0, d / "shards/shard-00002.parquet"),
         ["shard-00002.parquet", "not listed"]),
        ("extra-file-in-shards", lambda d: (d / "shards/notes.txt").write_text("x"), ["notes.txt", "not listed"]),
        ("extra-shard-in-a-sub-folder", lambda d: (d / "shards/old").mkdir() or shutil.copy(
            d / SHARD0, d / "shards/old/shard-00000.parquet"), ["old/shard-00000.parquet", "not listed"]),
        ("counts-one-short", lambda d: edit_manifest(d, encoded=31), ["hold 32 rows", "counts 31"]),
        ("counts-one-over", lambda d: edit_manifest(d, encoded=33), ["hold 32 rows", "counts 33"]),
        ("counts-far-over", lambda d: edit_manifest(d, encoded=1000), ["counts 1000", "different encodes"]),
        ("no-shards-listed", lambda d: edit_manifest(d, shards=[]), ["not listed", "shard-00000"]),
        ("manifest-latent-shape-2d", lambda d: edit_manifest(d, latent_shape=[8, 8]),
         ["manifest.json", "latent_shape"]),
        ("manifest-latent-shape-text", lambda d: edit_manifest(d, latent_shape="1x8x8"), ["latent_shape '1x8x8'"]),
        ("manifest-shards-a-string", lambda d: edit_manifest(d, shards=SHARD0), ["manifest.json", "shards"]),
        ("manifest-shard-outside", lambda d: edit_manifest(d, shards=["../elsewhere.parquet"]),
         ["manifest.json", "outside shards/"]),
        ("manifest-num-classes", lambda d: edit_manifest(d, num_classes=5), ["manifest.json", "num_classes 5"]),
        ("manifest-flip-text", lambda d: edit_manifest(d, flip="no"), ["manifest.json", "flip 'no'"]),
        ("two-problems-at-once", lambda d: (truncate(d / SHARD0, 100), (d / SHARD1).unlink()),
         ["2 problems", "shard-00000.parquet", "cut short", "shard-00001.parquet", "missing"]),
    ]
    return cases


def shape_cases():
    """(id, write_latent_set arguments, --set overrides, needles): sets the configured model cannot take."""
    return [
        ("side-7-patch-2", {"latent_shape": (1, 7, 7)}, [], ["1x7x7", "Micro/2", "patch_size 2", "--resolution"]),
        ("side-7-demo-patch-4", {"latent_shape": (3, 7, 7)}, ["model.overrides.patch_size=4"],
         ["3x7x7", "--resolution 7", "multiple of 4", "such as 8"]),
        ("side-6-patch-4", {"latent_shape": (1, 6, 6)}, ["model.overrides.patch_size=4"], ["1x6x6", "patch_size 4"]),
        ("vae-side-5", {"latent_shape": (4, 5, 5), "resolution": 40}, [],
         ["4x5x5", "--resolution 40", "multiple of 16"]),
        ("not-square", {"latent_shape": (1, 8, 6)}, [], ["1x8x6", "square"]),
    ]


def latent_cases(root: Path):
    """(id, latent folder, extra argv, needles) for every damaged latent set; each folder made under root."""
    rng = np.random.default_rng(SEED)
    base = write_latent_set(root / "base")
    cases = []
    for case_id, damage, needles in latent_damages(base, rng):
        folder = root / case_id
        shutil.copytree(base, folder)
        damage(folder)
        cases.append((case_id, folder, [], needles))
    for case_id, shape, overrides, needles in shape_cases():
        folder = write_latent_set(root / case_id, **shape)
        cases.append((case_id, folder, [a for o in overrides for a in ("--set", o)], needles))
    return cases


# ---- sample folders and references for `imf evaluate` ----------------------------------------------------------

def digit_like(n=20, side=8, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def save_npz(path: Path, **arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(npz_bytes(**arrays))


def good_npz(path: Path, n=20, seed=0):
    save_npz(path, arr_0=digit_like(n, seed=seed), labels=np.arange(n) % 10)


def damaged_member(path: Path):
    """An .npz whose directory and array headers are intact but whose pixels are not (a bad CRC when read)."""
    data = bytearray(npz_bytes(arr_0=digit_like(40), labels=np.arange(40) % 10))
    start = data.find(b"arr_0.npy") + 200
    data[start:start + 50] = bytes(50)
    path.write_bytes(bytes(data))


def png_parquet(path: Path, label_type=None, column="png", count=4):
    pngs = []
    for image in digit_like(count):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({column: pa.array(pngs, pa.binary()),
                             "label": pa.array(np.arange(count) % 10).cast(label_type or pa.int64())}), path)


def png_files(folder: Path, count=3, side=8):
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(digit_like(count, side)):
        Image.fromarray(image).save(folder / f"{i:03d}.png")


def evaluate_damages(rng):
    """(id, make(folder), needles): a sample folder (digits-sized, labelled) with one kind of damage."""
    whole = npz_bytes(arr_0=digit_like(20), labels=np.arange(20) % 10)
    cases = [(f"npz-truncated-at-{n}", lambda d, n=n: (d / "s.npz").write_bytes(whole[:n]),
              ["s.npz", "not a readable .npz"]) for n in sorted({0, len(whole) - 1, *(
                  int(x) for x in rng.integers(1, len(whole) - 1, TRUNCATIONS))})]
    cases += [
        ("npz-text", lambda d: (d / "s.npz").write_text("not a zip"), ["s.npz", "not a readable .npz"]),
        ("npz-pixels-damaged", lambda d: damaged_member(d / "s.npz"), ["s.npz", "damaged"]),
        ("npz-no-arr_0", lambda d: save_npz(d / "s.npz", images=digit_like()), ["s.npz", "no `arr_0`"]),
        ("npz-float-images", lambda d: save_npz(d / "s.npz", arr_0=digit_like().astype(np.float32)),
         ["s.npz", "float32"]),
        ("npz-int16-images", lambda d: save_npz(d / "s.npz", arr_0=digit_like().astype(np.int16)), ["s.npz", "int16"]),
        ("npz-flat-images", lambda d: save_npz(d / "s.npz", arr_0=digit_like().reshape(20, -1)),
         ["s.npz", "(20, 192)"]),
        ("npz-four-channels", lambda d: save_npz(d / "s.npz", arr_0=np.zeros((20, 8, 8, 4), np.uint8)),
         ["s.npz", "(20, 8, 8, 4)"]),
        ("npz-float-labels", lambda d: save_npz(d / "s.npz", arr_0=digit_like(), labels=np.zeros(20)),
         ["s.npz", "labels are float64"]),
        ("npz-labels-short", lambda d: save_npz(d / "s.npz", arr_0=digit_like(), labels=np.arange(19) % 10),
         ["s.npz", "shape (19,)"]),
        ("npz-labels-2d", lambda d: save_npz(d / "s.npz", arr_0=digit_like(), labels=np.zeros((20, 1), int)),
         ["s.npz", "(20, 1)"]),
        ("npz-labels-out-of-range", lambda d: save_npz(d / "s.npz", arr_0=digit_like(), labels=np.arange(20)),
         ["s.npz", "labels 0..19", "classes 0..9"]),
        ("npz-labels-negative", lambda d: save_npz(d / "s.npz", arr_0=digit_like(), labels=-np.ones(20, int)),
         ["s.npz", "labels -1..-1"]),
        ("npz-labels-missing-in-one", lambda d: (good_npz(d / "a.npz"), save_npz(d / "b.npz", arr_0=digit_like())),
         ["a.npz has labels", "b.npz has none"]),
        ("npz-sizes-mixed", lambda d: (good_npz(d / "a.npz"), save_npz(d / "b.npz", arr_0=digit_like(4, 16),
                                                                       labels=np.zeros(4, int))),
         ["mixes image sizes", "a.npz", "b.npz"]),
        ("npz-size-not-the-reference", lambda d: save_npz(d / "s.npz", arr_0=digit_like(8, 16),
                                                          labels=np.zeros(8, int)),
         ["s.npz", "16x16", "8x8"]),
        ("npz-no-images", lambda d: save_npz(d / "s.npz", arr_0=np.zeros((0, 8, 8, 3), np.uint8)), ["no images"]),
        ("empty-folder", lambda d: None, ["no .npz, .parquet, .png"]),
        ("only-other-files", lambda d: (d / "notes.txt").write_text("x"), ["no .npz, .parquet, .png"]),
        ("parquet-truncated", lambda d: (png_parquet(d / "s.parquet"), truncate(d / "s.parquet", 50)),
         ["s.parquet", "not a readable Parquet"]),
        ("parquet-no-png-column", lambda d: png_parquet(d / "s.parquet", column="image"),
         ["s.parquet", "no binary `png` column"]),
        ("parquet-png-as-text", lambda d: pq.write_table(pa.table({"png": ["x"], "label": [1]}), d / "s.parquet"),
         ["s.parquet", "png string"]),
        ("parquet-float-labels", lambda d: png_parquet(d / "s.parquet", label_type=pa.float32()),
         ["s.parquet", "column label is float"]),
        ("parquet-labels-out-of-range", lambda d: pq.write_table(pa.table({
            "png": pa.array([b"x"], pa.binary()), "label": [42]}), d / "s.parquet"), ["s.parquet", "labels 42..42"]),
        ("png-not-an-image", lambda d: (d / "a.png").write_text("no picture"), ["a.png", "not a readable image"]),
        ("png-truncated", lambda d: (png_files(d), truncate(d / "001.png", 20)), ["001.png", "not a readable image"]),
        ("png-sizes-mixed", lambda d: (png_files(d / "x", 2, 8), png_files(d / "y", 2, 16)),
         ["mixes image sizes", "8x8", "16x16"]),
    ]
    return cases


def reference_damages():
    """(id, make(path), needles): an --reference file with one kind of damage."""
    whole = npz_bytes(arr_0=digit_like(20), labels=np.arange(20) % 10)
    return [
        ("reference-truncated", lambda p: p.write_bytes(whole[: len(whole) // 2]), ["ref.npz", "not a readable"]),
        ("reference-text", lambda p: p.write_text("x"), ["ref.npz", "not a readable"]),
        ("reference-sigma-wrong", lambda p: save_npz(p, mu=np.zeros(4), sigma=np.eye(3)),
         ["ref.npz", "mu (4,)", "sigma (3, 3)"]),
        ("reference-float-labels", lambda p: save_npz(p, arr_0=digit_like(), labels=np.zeros(20)),
         ["ref.npz", "labels are float64"]),
        ("reference-labels-short", lambda p: save_npz(p, arr_0=digit_like(), labels=np.zeros(5, int)),
         ["ref.npz", "5 labels for 20 images"]),
        ("reference-float-images", lambda p: save_npz(p, arr_0=digit_like().astype(np.float32)),
         ["ref.npz", "float32"]),
        ("reference-nan-statistics", lambda p: save_npz(p, mu=np.full(3, np.nan), sigma=np.eye(3)),
         ["ref.npz", "not finite"]),
        ("reference-damaged-member", lambda p: damaged_member(p), ["ref.npz", "not a readable"]),
    ]


def evaluate_cases(root: Path):
    """(id, argv pieces {samples, reference}, needles) for every damaged sample folder and reference."""
    rng = np.random.default_rng(SEED)
    cases = []
    for case_id, make, needles in evaluate_damages(rng):
        folder = root / case_id
        folder.mkdir(parents=True)
        make(folder)
        cases.append((case_id, {"samples": str(folder), "reference": "digits"}, needles))
    good = root / "good-samples"
    good_npz(good / "s.npz")
    for case_id, make, needles in reference_damages():
        path = root / case_id / "ref.npz"
        path.parent.mkdir(parents=True)
        make(path)
        cases.append((case_id, {"samples": str(good), "reference": str(path)}, needles))
    return cases


