"""`imf encode` from and into a bucket on a real S3 API (moto's HTTP server on 127.0.0.1), for the three
layouts ImageNet comes in: class folders, WebDataset tars and Hugging Face-style Parquet."""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.cli import main
from pipelines.data.shards import read_manifest, read_shard
from pipelines.data.sources import tar_bytes
from tests.pipelines.image_trees import pattern, truncated_jpeg

CLASSES = ("ant", "bee", "cat")


def png(pixels) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def good_images(per_class=3) -> list[tuple[str, int, bytes]]:
    """[(class name, label, PNG bytes)] in (class, file) order: 8x8 RGB, so the crop is the identity."""
    return [(name, c, png(pattern(8, seed=10 * c + i))) for c, name in enumerate(CLASSES) for i in range(per_class)]


def encode(images, out, *extra, capsys=None):
    code = main(["encode", "--images", images, "--out", out, "--codec", "pixels", "--resolution", "8",
                 "--shard-size", "4", *extra])
    return code, (capsys.readouterr().out if capsys else "")


def rows_of(out) -> dict:
    """{index: (label, moments bytes)} of every shard the manifest lists (read through the bucket)."""
    rows = {}
    for name in read_manifest(out)["shards"]:
        table = read_shard(f"{out}/{name}").to_pydict()
        for i, label, moments in zip(table["index"], table["label"], table["moments"]):
            rows[i] = (label, np.asarray(moments, np.float16).tobytes())
    return rows


def goods(rows) -> list:
    """The encoded images as (label, moments) in index order: comparable across layouts."""
    return [rows[i] for i in sorted(rows)]


@pytest.mark.timeout(300)
def test_class_folders_in_a_bucket_encode_report_rejects_and_resume(s3, ray_session, tmp_path, capsys):
    bucket = s3.bucket()
    tree = tmp_path / "tree"
    for name, _, data in good_images():
        (tree / name).mkdir(parents=True, exist_ok=True)
        (tree / name / f"img{len(list((tree / name).iterdir())):02d}.png").write_bytes(data)
    (tree / "cat" / "zz_half.JPEG").write_bytes(truncated_jpeg())
    (tree / "cat" / "zz_empty.JPEG").write_bytes(b"")
    s3.upload(tree, f"{bucket}/images")

    code, printed = encode(f"{bucket}/images", f"{bucket}/latents", capsys=capsys)
    assert code == 0 and "9 images encoded, 2 rejected" in printed
    manifest = read_manifest(f"{bucket}/latents")
    assert manifest["format"] == "imf-latents/1" and manifest["class_names"] == list(CLASSES)
    assert manifest["counts"] == {"encoded": 9, "rejected": 2, "files": 11}
    reasons = {r["path"]: r["reason"] for r in manifest["rejects"]}
    assert "empty" in reasons["cat/zz_empty.JPEG"] and "truncated" in reasons["cat/zz_half.JPEG"]
    assert s3.keys(f"{bucket}/latents") == ["encode_plan.json", "manifest.json", "shards/shard-00000.parquet",
                                            "shards/shard-00001.parquet", "shards/shard-00002.parquet"]
    whole = rows_of(f"{bucket}/latents")
    assert [label for label, _ in goods(whole)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]

    # The same tree encoded from a local folder: the same shards.
    assert encode(str(tree), str(tmp_path / "local"))[0] == 0
    assert rows_of(tmp_path / "local") == whole

    # A run killed after some shards (here: one shard and the manifest gone): the re-run encodes only that one.
    s3.fs.delete_file(f"{bucket.removeprefix('s3://')}/latents/shards/shard-00001.parquet")
    s3.fs.delete_file(f"{bucket.removeprefix('s3://')}/latents/manifest.json")
    capsys.readouterr()
    with pytest.raises(Exception, match="did not finish"):
        read_manifest(f"{bucket}/latents")
    code, printed = encode(f"{bucket}/images", f"{bucket}/latents", capsys=capsys)
    assert code == 0 and "2 already done, 1 to encode" in printed and "this run encoded 4" in printed
    assert rows_of(f"{bucket}/latents") == whole


@pytest.mark.timeout(300)
def test_webdataset_tars_and_parquet_in_a_bucket_encode_like_class_folders(s3, ray_session, tmp_path, capsys):
    bucket = s3.bucket()
    images = good_images()
    folders = tmp_path / "tree"
    for k, (name, _, data) in enumerate(images):
        (folders / name).mkdir(parents=True, exist_ok=True)
        (folders / name / f"{k:03d}.png").write_bytes(data)
    assert encode(str(folders), str(tmp_path / "from_folders"))[0] == 0
    expected = goods(rows_of(tmp_path / "from_folders"))

    # WebDataset: two shards, JPEG-style and png members with .cls; one truncated image, one key without .cls.
    samples = [(f"s{k:03d}", {"cls": str(label).encode(), "png": data}) for k, (_, label, data) in enumerate(images)]
    samples += [("s900", {"cls": b"1", "jpg": truncated_jpeg()}), ("s901", {"png": images[0][2]})]
    tars = tmp_path / "tars"
    tars.mkdir()
    (tars / "train-0000.tar").write_bytes(tar_bytes(samples[:5]))
    (tars / "train-0001.tar").write_bytes(tar_bytes(samples[5:]))
    s3.upload(tars, f"{bucket}/wds")
    code, printed = encode(f"{bucket}/wds", f"{bucket}/from_wds", capsys=capsys)
    assert code == 0 and "imf encode: 11 files in 3 classes" in printed and "9 images encoded, 2 rejected" in printed
    manifest = read_manifest(f"{bucket}/from_wds")
    reasons = {r["path"]: r["reason"] for r in manifest["rejects"]}
    assert "truncated" in reasons["train-0001.tar/s900.jpg"] and "no class label" in reasons["train-0001.tar/s901.png"]
    assert manifest["class_names"] == ["0", "1", "2"]  # class indices as stored
    assert goods(rows_of(f"{bucket}/from_wds")) == expected

    # Hugging Face imagenet-1k style: image struct {bytes, path}, label int64, ClassLabel names in the metadata.
    names = json.dumps({"info": {"features": {"image": {"_type": "Image"},
                                              "label": {"_type": "ClassLabel", "names": list(CLASSES)}}}})
    rows = [({"bytes": data, "path": f"{k}.png"}, label) for k, (_, label, data) in enumerate(images)]
    rows += [({"bytes": b"not an image", "path": "bad.png"}, 2), ({"bytes": images[0][2], "path": "x.png"}, None)]
    parquet = tmp_path / "hf" / "data"
    parquet.mkdir(parents=True)
    for part, chunk in enumerate((rows[:6], rows[6:])):
        table = pa.table({"image": [r[0] for r in chunk], "label": pa.array([r[1] for r in chunk], pa.int64())})
        table = table.replace_schema_metadata({b"huggingface": names.encode()})
        pq.write_table(table, parquet / f"train-{part:05d}-of-00002.parquet", row_group_size=2)
    s3.upload(parquet, f"{bucket}/hf")
    code, printed = encode(f"{bucket}/hf", f"{bucket}/from_hf", capsys=capsys)
    assert code == 0 and "9 images encoded, 2 rejected" in printed
    manifest = read_manifest(f"{bucket}/from_hf")
    assert manifest["class_names"] == list(CLASSES)
    reasons = {r["path"]: r["reason"] for r in manifest["rejects"]}
    assert "not an image" in reasons["train-00001-of-00002.parquet#3"]
    assert "no class label" in reasons["train-00001-of-00002.parquet#4"]
    assert goods(rows_of(f"{bucket}/from_hf")) == expected

    # A layout that does not match --format: one clear error naming the input and the fix, nothing written.
    code = main(["encode", "--images", f"{bucket}/hf", "--out", f"{bucket}/wrong", "--codec", "pixels",
                 "--resolution", "8", "--format", "webdataset"])
    assert code == 2 and "no .tar files" in capsys.readouterr().err
    assert s3.keys(f"{bucket}/wrong") == []
    code = main(["encode", "--images", f"{bucket}/hf", "--out", "s3://no-such-bucket/latents", "--codec", "pixels"])
    assert code == 2 and "the bucket s3://no-such-bucket does not exist" in capsys.readouterr().err


def test_the_embedded_digits_go_to_a_bucket_as_a_class_folder_tree(s3):
    bucket = s3.bucket()
    assert main(["data", "embedded", "--out", f"{bucket}/digits", "--split", "test"]) in (0, None)
    keys = s3.keys(f"{bucket}/digits")
    assert len(keys) == 596 + 1 and ".imf_dataset.json" in keys
    assert sorted({k.split("/")[0] for k in keys if "/" in k}) == [str(c) for c in range(10)]
    image = Image.open(io.BytesIO(s3.read(f"{bucket}/digits/{next(k for k in keys if '/' in k)}")))
    assert image.size == (8, 8) and image.mode == "L"
