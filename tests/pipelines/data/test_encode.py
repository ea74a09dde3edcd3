import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipelines.cli import main
from pipelines.data.digits import write_embedded
from pipelines.data.encode import actor_pool, plan_encode, run_encode
from pipelines.data.images import center_crop, load_image, to_rgb
from pipelines.data.shards import MANIFEST, METADATA_KEY, read_manifest, shard_metadata
from tests.pipelines.image_trees import make_tree, sixteen_bit_png, truncated_jpeg


def read_rows(out) -> dict:
    """{index: (label, moments float32, moments_flip or None)} over all shards of an encode output."""
    rows = {}
    for name in read_manifest(out)["shards"]:
        table = pq.read_table(Path(out) / name).to_pydict()
        flips = table.get("moments_flip", [None] * len(table["index"]))
        for i, label, m, f in zip(table["index"], table["label"], table["moments"], flips):
            rows[i] = (label, np.asarray(m, np.float32), None if f is None else np.asarray(f, np.float32))
    return rows


def as_pixels(moments, shape=(3, 16, 16)) -> np.ndarray:
    """Pixel-codec mean -> uint8 HWC, inverting x / 127.5 - 1."""
    mean = moments[: int(np.prod(shape))].reshape(shape).transpose(1, 2, 0)
    return np.rint((mean + 1) * 127.5).astype(int)


def test_embedded_dataset_is_sklearn_digits_as_png_class_folders(tmp_path, capsys):
    from sklearn.datasets import load_digits

    digits = load_digits()
    written = {}
    for split, count in (("train", 1201), ("test", 596), ("all", 1797)):
        assert main(["data", "embedded", "--out", str(tmp_path / split), "--split", split]) in (0, None)
        assert f"wrote {count} 8x8" in capsys.readouterr().out
        folders = sorted(p.name for p in (tmp_path / split).iterdir() if p.is_dir())
        assert folders == [str(d) for d in range(10)]
        written[split] = {int(p.stem) for p in (tmp_path / split).rglob("*.png")}
        assert len(written[split]) == count
    assert not written["train"] & written["test"] and written["train"] | written["test"] == written["all"]
    test_labels = digits.target[sorted(written["test"])]
    assert [int((test_labels == c).sum()) for c in range(10)] == [int((digits.target == c).sum()) // 3
                                                                  for c in range(10)]  # every 3rd of each class
    for i in (0, 1000, 1796):
        label = digits.target[i]
        image = np.asarray(Image.open(tmp_path / "all" / str(label) / f"{i:04d}.png"))
        assert image.shape == (8, 8) and image.dtype == np.uint8
        np.testing.assert_array_equal(image, np.rint(digits.images[i] * 255 / 16))
    with pytest.raises(Exception, match="already holds"):
        (tmp_path / "train" / "extra").mkdir()
        write_embedded(tmp_path / "train")


def test_adm_center_crop_keeps_the_centre_and_upscales_small_images():
    # 400x300 horizontal ramp: halved twice (100x75), bicubic to 85x64, then columns 10..73 kept.
    ramp = np.tile(np.linspace(0, 255, 400)[None, :], (300, 1)).astype(np.uint8)
    crop = center_crop(to_rgb(Image.fromarray(ramp, "L")), 64)
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
    assert abs(int(crop[30, 0, 0]) - 255 * 10.5 / 85) < 4 and abs(int(crop[30, -1, 0]) - 255 * 73.5 / 85) < 4
    small = center_crop(Image.new("RGB", (5, 7), (30, 60, 90)), 16)
    assert small.shape == (16, 16, 3) and (small == [30, 60, 90]).all()


def test_colour_modes_are_converted_and_bad_files_give_reasons(tmp_path):
    Image.new("L", (16, 16), 77).save(tmp_path / "gray.png")
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0], rgba[:, 8:, 3] = 200, 255  # left half transparent
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 255, 10, 200, 30] + [0] * 762)
    palette.save(tmp_path / "palette.png")
    sixteen_bit_png(tmp_path / "deep.png", 40000)
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    assert (load_image(tmp_path / "gray.png", 16) == 77).all()
    red = load_image(tmp_path / "cmyk.jpg", 16)[8, 8]
    assert red[0] > 240 and red[1] < 15 and red[2] < 15
    rgba_out = load_image(tmp_path / "rgba.png", 16)
    assert (rgba_out[:, :8] == 255).all() and (rgba_out[:, 8:] == [200, 0, 0]).all()
    assert (load_image(tmp_path / "palette.png", 16) == [10, 200, 30]).all()
    assert (load_image(tmp_path / "deep.png", 16) == round(40000 / 257)).all()  # scaled, not clipped to 255

    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "half.jpg").write_bytes(truncated_jpeg())
    (tmp_path / "notes.txt").write_text("not an image")
    for name, reason in [("empty.jpg", "empty file"), ("half.jpg", "truncated"), ("notes.txt", "not an image")]:
        with pytest.raises(ValueError, match=reason):
            load_image(tmp_path / name, 16)


def test_bad_inputs_are_clear_errors_before_any_work(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"

    def fails(images, *extra):
        assert main(["encode", "--images", str(images), "--out", str(out), "--codec", "pixels", *extra]) == 2
        return capsys.readouterr().err

    err = fails(tmp_path / "nope")
    assert "does not exist" in err and str(tmp_path / "nope") in err and "imf data embedded" in err
    (tmp_path / "empty").mkdir()
    assert "is empty" in fails(tmp_path / "empty")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    assert "has no class sub-folders" in fails(tmp_path / "flat")
    (tmp_path / "hollow" / "cat").mkdir(parents=True)
    assert "hold no files" in fails(tmp_path / "hollow")
    make_tree(tmp_path / "tree", per_class=1)
    assert "--resolution 0" in fails(tmp_path / "tree", "--resolution", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = fails(tmp_path / "tree", "--codec", "sd-vae", "--vae", "nobody/no-such-vae")
    assert "nobody/no-such-vae" in err and "save_pretrained" in err
    assert not out.exists()  # nothing was started or written


def tree_files(root: Path) -> list:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("out,needle", [
    ("images", "--out {root}/images is the --images folder"),
    ("images/latents", "--out {root}/images/latents lies inside --images {root}/images"),
    ("images/0/latents", "--out {root}/images/0/latents lies inside --images {root}/images"),
    ("link/latents", "lies inside --images {root}/images"),  # through a symbolic link to the tree
    (".", "--images {root}/images lies inside --out {root}"),
])
def test_an_out_inside_images_or_holding_them_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch,
                                                                                     out, needle):
    make_tree(tmp_path / "images", per_class=1)
    (tmp_path / "link").symlink_to(tmp_path / "images")
    before = tree_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["encode", "--images", "images", "--out", out, "--codec", "pixels"]) == 2
    err = capsys.readouterr().err
    assert needle.format(root=tmp_path) in err and "choose an --out" in err and "Traceback" not in err
    assert tree_files(tmp_path) == before  # not a shard, manifest or plan


def test_buckets_are_apart_unless_one_prefix_holds_the_other():
    from pipelines.data.encode import check_apart
    from pipelines.errors import UserError
    from pipelines.storage import Location

    def bucket(uri):  # a Location without a filesystem: check_apart compares URIs only
        return Location(uri, None, None, uri.split("://", 1)[1])

    check_apart(bucket("s3://data/images"), bucket("s3://data/images-latents"))  # a sibling sharing a prefix
    check_apart(bucket("s3://data/images"), bucket("gs://data/images/latents"))  # another store
    with pytest.raises(UserError, match="--out s3a://data/images/latents lies inside --images s3://data/images"):
        check_apart(bucket("s3://data/images"), bucket("s3a://data/images/latents"))


def test_resolutions_the_codec_cannot_take_are_refused_and_the_configs_cannot_use_are_warned_about(
        tmp_path, capsys, tiny_vae):
    make_tree(tmp_path / "images", per_class=1)

    def encode_plan(*flags):
        status = main(["encode", "--images", str(tmp_path / "images"), "--out", str(tmp_path / "out"), *flags,
                       "--address", "ray://127.0.0.1:9"])  # planning passes, then the dead address stops the run
        return status, capsys.readouterr().err

    status, err = encode_plan("--codec", "sd-vae", "--vae", str(tiny_vae), "--resolution", "15")
    assert status == 2 and "--resolution 15: resolution 15 is not a multiple of the VAE's downsampling 2" in err
    status, err = encode_plan("--codec", "pixels", "--resolution", "7")
    assert "warning: --resolution 7 gives 7x7 latents, which no shipped config can train on" in err
    assert "patch size 2 (imf_b2, imf_l2, imf_m2, imf_xl2), 4 (demo)" in err and "--resolution 8" in err
    assert "model.overrides.patch_size=P for P in 1, 7" in err
    status, err = encode_plan("--codec", "sd-vae", "--vae", str(tiny_vae), "--resolution", "12")
    assert "12 gives 6x6 latents, which the shipped demo cannot train on" in err and "--resolution 16" in err
    status, err = encode_plan("--codec", "pixels", "--resolution", "8")
    assert "warning" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.timeout(300)
def test_encode_converts_rejects_and_labels_by_sorted_folder(tmp_path, ray_session, capsys):
    images = tmp_path / "images"
    good = make_tree(images, classes=("a_rgb",), per_class=2)
    modes = images / "b_modes"
    modes.mkdir()
    Image.new("L", (16, 16), 77).save(modes / "1_gray.png")
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(modes / "2_cmyk.jpg", quality=95)
    Image.fromarray(np.dstack([np.full((16, 16, 3), 200, np.uint8),
                               np.zeros((16, 16), np.uint8)])).save(modes / "3_rgba.png")
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)
    palette.save(modes / "4_palette.png")
    sixteen_bit_png(modes / "5_deep.png", 65535)
    Image.new("RGB", (5, 7), (30, 60, 90)).save(modes / "6_small.png")
    bad = images / "c_bad"
    bad.mkdir()
    (bad / "empty.JPEG").write_bytes(b"")
    (bad / "half.JPEG").write_bytes(truncated_jpeg())
    (bad / "notes.txt").write_text("hello")
    (bad / ".DS_Store").write_bytes(b"\0")  # hidden: not an input at all

    out = tmp_path / "latents"
    assert main(["encode", "--images", str(images), "--out", str(out), "--codec", "pixels", "--resolution", "16",
                 "--shard-size", "4"]) in (0, None)
    printed = capsys.readouterr().out
    assert "8 images encoded, 3 rejected" in printed and "images/s" in printed and "shards 3/3" in printed

    manifest = read_manifest(out)
    assert manifest["class_names"] == ["a_rgb", "b_modes", "c_bad"] and manifest["num_classes"] == 3
    assert manifest["counts"] == {"encoded": 8, "rejected": 3, "files": 11}
    assert manifest["latent_shape"] == [3, 16, 16] and manifest["crop"] == "adm-center" and not manifest["flip"]
    reasons = {r["path"]: r["reason"] for r in manifest["rejects"]}
    assert set(reasons) == {"c_bad/empty.JPEG", "c_bad/half.JPEG", "c_bad/notes.txt"}
    assert "empty" in reasons["c_bad/empty.JPEG"] and "truncated" in reasons["c_bad/half.JPEG"]
    assert len(manifest["shards"]) == 3  # the last shard holds only rejects and is empty

    rows = read_rows(out)
    assert sorted(rows) == list(range(8))  # indices 8..10 are the rejected files
    assert [rows[i][0] for i in range(8)] == [0, 0, 1, 1, 1, 1, 1, 1]
    np.testing.assert_array_equal(as_pixels(rows[0][1]), good["a_rgb/img00.png"])
    expected = {2: [77, 77, 77], 4: [255, 255, 255], 5: [0, 0, 0], 6: [255, 255, 255], 7: [30, 60, 90]}
    for index, rgb in expected.items():
        assert (np.abs(as_pixels(rows[index][1]) - rgb) <= 1).all(), index
    cmyk = as_pixels(rows[3][1])[8, 8]
    assert cmyk[0] > 240 and cmyk[1] < 15 and cmyk[2] < 15
    assert not np.any(rows[0][1][3 * 16 * 16:])  # pixel codec: std = 0

    shard = pq.read_table(out / manifest["shards"][0])
    assert shard.schema.field("moments").type == pa.list_(pa.float16(), 2 * 3 * 16 * 16)
    assert shard.schema.field("index").type == pa.int64() and shard.schema.field("label").type == pa.int32()
    assert not any(isinstance(f.type, pa.ExtensionType) for f in shard.schema)
    meta = json.loads(shard.schema.metadata[METADATA_KEY])
    assert meta["codec"]["codec"] == "pixels" and meta["latent_shape"] == [3, 16, 16] and meta["resolution"] == 16
    assert meta["class_names"] == manifest["class_names"] and meta["crop"] == "adm-center"

    # The same folder asked for another resolution: a clear error, and nothing on disk changes.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert main(["encode", "--images", str(images), "--out", str(out), "--codec", "pixels", "--resolution", "8"]) == 2
    err = capsys.readouterr().err
    assert "resolution" in err and str(out) in err and "another --out" in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, sample_size=16)
    path = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(path)
    return path


@pytest.mark.timeout(300)
def test_sd_vae_moments_and_flips_match_the_codec(tmp_path, ray_session, tiny_vae, monkeypatch):
    from imf_core import make_codec

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    images = make_tree(tmp_path / "images", classes=("x", "y"), per_class=3, size=24)  # cropped to 16
    plan = plan_encode(tmp_path / "images", tmp_path / "out", codec="sd-vae", vae=str(tiny_vae), resolution=16,
                       flip=True, shard_size=4)
    summary = run_encode(plan)
    assert summary["encoded"] == 6 and summary["rejected"] == 0 and summary["shards_this_run"] == 2
    manifest = read_manifest(tmp_path / "out")
    assert manifest["latent_shape"] == [4, 8, 8] and manifest["codec"]["weights"] == str(tiny_vae)
    codec = make_codec("sd-vae", weights=str(tiny_vae))
    rows = read_rows(tmp_path / "out")
    all_means = []
    for index, rel in enumerate(sorted(images)):
        pixels = torch.tensor(center_crop(Image.fromarray(images[rel]), 16)).permute(2, 0, 1)[None].float() / 127.5 - 1
        for x, stored in ((pixels, rows[index][1]), (pixels.flip(3), rows[index][2])):
            mean, std = codec.encode(x)
            np.testing.assert_allclose(stored, torch.cat([mean.flatten(), std.flatten()]).numpy(), rtol=2e-3, atol=2e-3)
        all_means.append(codec.encode(pixels)[0])
    means = torch.cat(all_means).double()
    np.testing.assert_allclose(manifest["latent_stats"]["mean"], means.mean((0, 2, 3)).numpy(), atol=1e-3)
    np.testing.assert_allclose(manifest["latent_stats"]["std"], means.std((0, 2, 3), correction=0).numpy(), atol=1e-3)
    assert (shard_metadata(tmp_path / "out" / manifest["shards"][1])["codec"]["channel_std"]
            == manifest["codec"]["channel_std"])


def test_codec_actors_are_sized_from_the_cluster(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 32.0, "GPU": 2.0})
    assert actor_pool(num_shards=100) == (2, {"num_gpus": 1, "num_cpus": 1})
    assert actor_pool(num_shards=1) == (1, {"num_gpus": 1, "num_cpus": 1})
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0})
    assert actor_pool(num_shards=100) == (4, {"num_cpus": 2})
    assert actor_pool(num_shards=100, actors=3) == (3, {"num_cpus": 2})
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    assert actor_pool(num_shards=100) == (1, {"num_cpus": 1})  # a 2-CPU actor would starve the decoding


STALL_HOOK = """
import os
if os.environ.get("IMF_TEST_STALL"):
    import time
    from pipelines.storage import Location
    _read = Location.read_bytes

    def _stalling_read(self):
        if self.path.endswith(os.environ["IMF_TEST_STALL"]):
            time.sleep(600)  # the test kills the run while this image is being read
        return _read(self)

    Location.read_bytes = _stalling_read
"""


@pytest.mark.timeout(400)
def test_killed_run_resumes_missing_shards_only_and_equals_an_uninterrupted_run(tmp_path, ray_session):
    images = tmp_path / "images"
    written = make_tree(images, classes=("a", "b", "c"), per_class=8, size=8)  # 24 files: 6 shards of 4
    stalled = sorted(written)[13]  # in shard 3
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(STALL_HOOK)
    env = {**os.environ, "IMF_TEST_STALL": stalled, "PYTHONPATH": os.pathsep.join([str(hook), os.getcwd()])}
    out = tmp_path / "resumed"
    args = ["encode", "--images", str(images), "--out", str(out), "--codec", "pixels", "--resolution", "8",
            "--flip", "--shard-size", "4"]
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], env=env, stdout=log, stderr=log,
                                start_new_session=True)
    try:
        deadline = time.time() + 240
        while not (out / "shards" / "shard-00000.parquet").exists():
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.time() < deadline, "no shard appeared"
            time.sleep(0.5)
        time.sleep(2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / MANIFEST).exists()
    with pytest.raises(Exception, match="did not finish"):
        read_manifest(out)
    plan = plan_encode(images, out, codec="pixels", resolution=8, flip=True)  # shard size comes from the first run
    assert 0 in plan.existing and 3 not in plan.existing and plan.shard_size == 4
    kept = {k: shard.stat().st_mtime_ns for k in plan.existing
            for shard in [out / "shards" / f"shard-{k:05d}.parquet"]}
    summary = run_encode(plan)
    assert summary["shards_this_run"] == 6 - len(kept) and summary["encoded"] == 24
    assert summary["encoded_this_run"] == 4 * (6 - len(kept))
    assert {k: (out / "shards" / f"shard-{k:05d}.parquet").stat().st_mtime_ns for k in kept} == kept

    reference = tmp_path / "reference"
    run_encode(plan_encode(images, reference, codec="pixels", resolution=8, flip=True, shard_size=4))
    assert json.loads((out / MANIFEST).read_text()) == json.loads((reference / MANIFEST).read_text())
    for name in read_manifest(reference)["shards"]:
        a, b = pq.read_table(out / name), pq.read_table(reference / name)
        assert a.equals(b) and a.schema.metadata == b.schema.metadata
    assert not list((out / "shards").glob(".*tmp*"))
    rows = read_rows(out)
    for index, rel in enumerate(sorted(written)):
        np.testing.assert_array_equal(as_pixels(rows[index][1], (3, 8, 8)), written[rel])
        np.testing.assert_array_equal(as_pixels(rows[index][2], (3, 8, 8)), written[rel][:, ::-1])
