import json

import numpy as np
import pytest
import torch

from pipelines.data.encode import plan_encode, run_encode
from pipelines.data.shards import MANIFEST, PLAN, TORCH_DTYPES, latent_dataset, read_manifest, to_training_batch
from pipelines.errors import UserError
from tests.pipelines.image_trees import make_tree


def test_read_manifest_names_the_folder_and_the_fix(tmp_path):
    with pytest.raises(UserError, match=f"{tmp_path / 'nope'} does not exist.*imf encode"):
        read_manifest(tmp_path / "nope")
    with pytest.raises(UserError, match=f"{tmp_path} is not an `imf encode` output"):
        read_manifest(tmp_path)
    (tmp_path / PLAN).write_text("{}")
    with pytest.raises(UserError, match="did not finish.*re-run the same `imf encode`"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"codec": {}}))
    with pytest.raises(UserError, match="lacks"):
        read_manifest(tmp_path)


def fake_batch(n=64, shape=(2, 3, 4), flip=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = int(np.prod(shape))
    moments = torch.cat([torch.randn(n, size, generator=g), torch.rand(n, size, generator=g) + 0.5], 1)
    batch = {"index": torch.arange(n), "label": torch.arange(n) % 7, "moments": moments}
    if flip:
        batch["moments_flip"] = torch.cat([torch.randn(n, size, generator=g) + 10, moments[:, size:] * 2], 1)
    return batch


def test_to_training_batch_draws_flips_then_noise_from_the_generator():
    shape, n = (2, 3, 4), 64
    batch = fake_batch(n, shape)
    x, y = to_training_batch(batch, torch.Generator().manual_seed(5), shape, flip=True)
    assert x.shape == (n, *shape) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(y, batch["label"])
    g = torch.Generator().manual_seed(5)
    mirror = torch.rand(n, generator=g) < 0.5
    noise = torch.randn((n, *shape), generator=g)
    source = torch.where(mirror[:, None], batch["moments_flip"], batch["moments"]).view(n, 2, *shape)
    torch.testing.assert_close(x, source[:, 0] + source[:, 1] * noise)
    assert 0 < mirror.sum() < n
    again, _ = to_training_batch(batch, torch.Generator().manual_seed(6), shape, flip=True)
    assert not torch.allclose(again, x)  # a fresh posterior sample per use
    plain, _ = to_training_batch(batch, torch.Generator().manual_seed(5), shape, flip=False)
    m = batch["moments"].view(n, 2, *shape)
    torch.testing.assert_close(plain, m[:, 0] + m[:, 1] * torch.randn((n, *shape),
                                                                      generator=torch.Generator().manual_seed(5)))
    with pytest.raises(UserError, match="without --flip"):
        to_training_batch(fake_batch(4, shape, flip=False), torch.Generator(), shape, flip=True)


@pytest.mark.timeout(300)
def test_reader_yields_labelled_pixel_latents_and_mirror_images_through_ray_data(tmp_path, ray_session):
    written = make_tree(tmp_path / "images", classes=("cat", "ant", "bee"), per_class=4, size=8)
    run_encode(plan_encode(tmp_path / "images", tmp_path / "out", codec="pixels", resolution=8, flip=True,
                           shard_size=5))
    manifest = read_manifest(tmp_path / "out")
    ordered = sorted(written, key=lambda rel: (manifest["class_names"].index(rel.split("/")[0]), rel))
    pixels = {i: torch.tensor(written[rel]).permute(2, 0, 1).float() / 127.5 - 1 for i, rel in enumerate(ordered)}
    labels = {i: manifest["class_names"].index(rel.split("/")[0]) for i, rel in enumerate(ordered)}
    assert manifest["class_names"] == ["ant", "bee", "cat"]

    ds = latent_dataset(tmp_path / "out").materialize()  # read once, iterated four times
    assert set(ds.schema().names) == {"index", "label", "moments", "moments_flip"}
    g = torch.Generator().manual_seed(0)
    mirrored = plain = 0
    for _ in range(3):
        seen = []
        for batch in ds.iter_torch_batches(batch_size=5, dtypes=TORCH_DTYPES):
            x, y = to_training_batch(batch, g, manifest["latent_shape"], flip=True)
            assert x.shape[1:] == (3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
            for i, xi, yi in zip(batch["index"].tolist(), x, y):
                assert yi == labels[i]
                if torch.allclose(xi, pixels[i], atol=4e-3):
                    plain += 1
                else:
                    torch.testing.assert_close(xi, pixels[i].flip(2), atol=4e-3, rtol=0)  # the mirror image
                    mirrored += 1
            seen += batch["index"].tolist()
        assert sorted(seen) == list(range(12))
    assert mirrored > 3 and plain > 3
    shapes = [(x.shape, y.tolist()) for x, y in (to_training_batch(b, g, manifest["latent_shape"], False)
                                                  for b in ds.iter_torch_batches(batch_size=4, dtypes=TORCH_DTYPES))]
    assert len(shapes) == 3 and all(s == (4, 3, 8, 8) for s, _ in shapes)
    assert sorted(sum((lab for _, lab in shapes), [])) == sorted(labels.values())


def test_grayscale_pixels_are_one_luma_channel(tmp_path, ray_session):
    from PIL import Image

    written = make_tree(tmp_path / "images", classes=("a", "b"), per_class=2, size=8)
    run_encode(plan_encode(tmp_path / "images", tmp_path / "out", codec="pixels", resolution=8, grayscale=True))
    manifest = read_manifest(tmp_path / "out")
    assert manifest["latent_shape"] == [1, 8, 8] and manifest["codec"]["channels"] == 1
    ordered = sorted(written, key=lambda rel: (manifest["class_names"].index(rel.split("/")[0]), rel))
    batch = next(iter(latent_dataset(tmp_path / "out").iter_torch_batches(batch_size=4, dtypes=TORCH_DTYPES)))
    x, _ = to_training_batch(batch, torch.Generator().manual_seed(0), manifest["latent_shape"], flip=False)
    for i, xi in zip(batch["index"].tolist(), x):
        luma = np.asarray(Image.fromarray(written[ordered[i]]).convert("L"), dtype=np.float32)
        np.testing.assert_allclose(xi[0].numpy(), luma / 127.5 - 1, atol=1.5 / 127.5)


def test_encode_logs_its_counts_to_mlflow_when_asked(tmp_path, ray_session):
    from mlflow.tracking import MlflowClient

    from pipelines import cli

    make_tree(tmp_path / "images", classes=("a", "b"), per_class=2, size=8)
    store = f"sqlite:///{tmp_path}/mlflow.db"
    assert cli.main(["encode", "--images", str(tmp_path / "images"), "--out", str(tmp_path / "out"),
                     "--codec", "pixels", "--resolution", "8", "--tracking-uri", store]) == 0
    client = MlflowClient(store)
    run = client.search_runs([client.get_experiment_by_name("imf/encode").experiment_id])[0]
    assert run.data.metrics["encoded"] == 4 and run.data.params["resolution"] == "8"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["manifest.json"]
