"""Evaluation: metrics against closed forms and against torch-fidelity's own functions, the Inception-v3
extractor with random weights from a local file, the image-set formats and `imf evaluate` end to end."""

import io
import json
import sys
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from scipy import linalg

from pipelines import metrics as M
from pipelines.cli import main
from pipelines.errors import UserError
from pipelines.evaluation.image_sets import scan_images
from pipelines.evaluation.inception import WEIGHTS_ENV, WEIGHTS_URL, InceptionFeatures, fidelity_module
from pipelines.evaluation.scoring import Reference, build_reference, digits_reference, evaluate_images


def _not_used(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return None


@pytest.fixture
def fidelity(monkeypatch):
    """torch-fidelity's metric modules. They import extraction helpers from torch_fidelity.utils, which
    imports torchvision; the feature-to-metric functions compared here use none of those helpers."""
    utils = types.ModuleType("torch_fidelity.utils")
    utils.__getattr__ = _not_used
    monkeypatch.setitem(sys.modules, "torch_fidelity.utils", utils)
    names = ("metric_fid", "metric_isc", "metric_prc")
    yield types.SimpleNamespace(**{n: fidelity_module(n) for n in names})
    for n in names:  # bound to the stand-in above: not for anyone else
        sys.modules.pop(f"torch_fidelity.{n}", None)


def _rotation(d, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


# ---- Fréchet distance -------------------------------------------------------------------------------------

def test_frechet_distance_of_gaussians_with_common_eigenvectors_is_closed_form():
    d, q = 6, _rotation(6, 0)
    a, b = np.linspace(0.5, 3.0, d), np.linspace(4.0, 0.2, d)
    mu1, mu2 = np.arange(d, dtype=float), np.arange(d, dtype=float) + 0.5
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    expected = d * 0.25 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)
    assert M.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-10)


def test_frechet_distance_of_general_gaussians_matches_the_matrix_square_root_form():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = x @ x.T + 0.1 * np.eye(5), y @ y.T + 0.1 * np.eye(5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_fid_on_the_same_features_equals_torch_fidelity(fidelity):
    rng = np.random.default_rng(2)
    fake = rng.normal(size=(300, 24)).astype(np.float32)
    real = (rng.normal(size=(400, 24)) @ rng.normal(size=(24, 24)) * 0.3 + 0.7).astype(np.float32)
    stats = fidelity.metric_fid.fid_features_to_statistics
    theirs = fidelity.metric_fid.fid_statistics_to_metric(stats(torch.from_numpy(fake)), stats(torch.from_numpy(real)),
                                                          verbose=False)["frechet_inception_distance"]
    assert theirs > 1.0
    assert M.fid_from_features(fake, real) == pytest.approx(theirs, rel=1e-12)
    mu, sigma = M.feature_statistics(real)
    assert M.fid_from_features(fake, real_mu=mu, real_sigma=sigma) == pytest.approx(theirs, rel=1e-12)


def test_pixel_frechet_distance_of_a_shifted_set_is_the_squared_shift():
    images = np.random.default_rng(3).integers(0, 200, size=(600, 4, 4, 3), dtype=np.uint8)
    # same covariance, every one of the 48 pixel means moved by 50/255
    assert M.pixel_frechet_distance(images, images + 50) == pytest.approx(48 * (50 / 255) ** 2, rel=1e-6)
    with pytest.raises(ValueError, match="one size"):
        M.pixel_frechet_distance(images, images[:, :2])


# ---- Inception Score --------------------------------------------------------------------------------------

def test_inception_score_of_uniform_and_one_hot_predictions():
    assert M.inception_score(np.zeros((40, 1008)), splits=4) == pytest.approx((1.0, 0.0))
    one_hot = np.full((50, 10), -1e4)
    one_hot[np.arange(50), np.arange(50) % 10] = 0.0  # each class equally often, each prediction certain
    mean, std = M.inception_score(one_hot, splits=1)
    assert mean == pytest.approx(10.0, rel=1e-12) and std == 0.0


def test_inception_score_equals_torch_fidelity(fidelity):
    logits = torch.from_numpy(np.random.default_rng(4).normal(scale=3.0, size=(200, 1008)).astype(np.float32))
    theirs = fidelity.metric_isc.isc_features_to_metric(logits)
    mean, std = M.inception_score(logits.numpy())
    assert mean > 1.5
    assert (mean, std) == pytest.approx((theirs["inception_score_mean"], theirs["inception_score_std"]), rel=1e-12)


# ---- precision / recall -----------------------------------------------------------------------------------

def test_knn_precision_recall_on_constructed_points():
    real = np.arange(10, dtype=float)[:, None]  # nearest real neighbour at distance 1: every ball has radius 1
    fake = np.array([[0.5], [1.5], [100.0], [101.0]])  # ball radii: 1, 1, 1, 1 (nearest other fake)
    precision, recall = M.knn_precision_recall(real, fake, k=1)
    assert precision == 0.5  # 0.5 and 1.5 lie within 1 of a real point; 100 and 101 do not
    assert recall == 0.3  # only reals 0, 1 and 2 lie within a fake ball
    with pytest.raises(ValueError, match="more than 3"):
        M.knn_precision_recall(real, fake[:3], k=3)


def test_knn_precision_recall_equals_torch_fidelity(fidelity):
    rng = np.random.default_rng(5)
    real = torch.from_numpy(rng.normal(size=(150, 8)).astype(np.float32))
    fake = torch.from_numpy(rng.normal(loc=0.4, scale=1.3, size=(120, 8)).astype(np.float32))
    # torch-fidelity's convention: features_1 generated, features_2 real
    theirs = fidelity.metric_prc.calculate_precision_recall_full(fake, real, neighborhood=3)
    ours = M.knn_precision_recall(real.numpy(), fake.numpy(), k=3, chunk=64)
    assert 0.0 < ours[0] < 1.0 and 0.0 < ours[1] < 1.0
    assert ours == pytest.approx(theirs, abs=1e-6)


# ---- classifier on the embedded digits --------------------------------------------------------------------

def test_classifier_trained_on_real_digits_reads_the_class_of_held_out_digits():
    from pipelines.data.digits import digits
    from pipelines.data.images import as_rgb_uint8

    images, labels = digits("train")
    held = digits_reference()  # the test split: never among the training digits
    right = M.classifier_accuracy(as_rgb_uint8(images), labels, held.images, held.labels)
    wrong = M.classifier_accuracy(as_rgb_uint8(images), labels, held.images, (held.labels + 1) % 10)
    assert len(held.labels) == 596 and right > 0.97 and wrong < 0.05


def test_pixel_metrics_of_the_embedded_set_against_itself_and_noise():
    ref = digits_reference()
    same = evaluate_images(ref.images, ref.labels, reference=ref)
    assert set(same) == {"fd_pixels_digits_test", "precision_k3_pixels_digits_test", "recall_k3_pixels_digits_test",
                         "cls_acc_digits_test"}
    assert abs(same["fd_pixels_digits_test"]) < 1e-6
    assert same["precision_k3_pixels_digits_test"] == same["recall_k3_pixels_digits_test"] == 1.0
    noise = np.random.default_rng(6).integers(0, 256, size=(300, 8, 8), dtype=np.uint8)
    other = evaluate_images(torch.from_numpy(noise)[:, None], reference=ref)  # torch (N, 1, H, W), no labels
    assert other["fd_pixels_digits_test"] > 10.0 and other["precision_k3_pixels_digits_test"] == 0.0
    assert "cls_acc_digits_test" not in other
    with pytest.raises(UserError, match="labels"):
        evaluate_images(noise, reference=ref, metrics="cls_acc")


# ---- image-set formats ------------------------------------------------------------------------------------

def _png(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_npz_parquet_png_and_class_folders_read_alike(tmp_path):
    images, labels = digits_reference().images[:40], digits_reference().labels[:40]
    (tmp_path / "npz").mkdir()
    np.savez(tmp_path / "npz" / "000.npz", arr_0=images[:25], labels=labels[:25])
    np.savez(tmp_path / "npz" / "001.npz", arr_0=images[25:, ..., 0], labels=labels[25:])  # grey (N, H, W)
    (tmp_path / "pq").mkdir()
    table = pa.table({"png": [_png(im) for im in images], "label": labels.astype(np.int32)})
    pq.write_table(table, tmp_path / "pq" / "part-0.parquet")
    (tmp_path / "png").mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im[..., 0], "L").save(tmp_path / "png" / f"{i:03d}.png")
    for name in ("npz", "pq"):
        scan = scan_images(tmp_path / name, batch_size=16)
        assert scan.count == 40 and np.array_equal(scan.images, images) and np.array_equal(scan.labels, labels)
    flat = scan_images(tmp_path / "png", batch_size=16)
    assert np.array_equal(flat.images, images) and flat.labels is None


def test_reference_from_the_embedded_class_folders_equals_the_builtin_digits(tmp_path):
    assert main(["data", "embedded", "--out", str(tmp_path / "digits"), "--split", "test"]) == 0
    assert main(["evaluate", "reference", "--images", str(tmp_path / "digits"), "--out",
                 str(tmp_path / "ref.npz"), "--no-inception"]) == 0
    loaded, builtin = Reference.load(tmp_path / "ref.npz"), digits_reference()
    assert loaded.name == "digits" and loaded.mu is None

    def rows(ref):  # the folder tree orders images by class: compare as sets of (label, pixels)
        flat = np.concatenate([ref.labels[:, None], ref.images.reshape(len(ref.images), -1)], axis=1)
        return flat[np.lexsort(flat.T[::-1])]
    assert np.array_equal(rows(loaded), rows(builtin))


def test_unreadable_inputs_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .npz, .parquet, .png"):
        scan_images(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="x.png: not a readable image"):
        scan_images(tmp_path / "bad")
    np.savez(tmp_path / "f.npz", arr_0=np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(UserError, match="f.npz: images must be uint8"):
        scan_images(tmp_path / "f.npz")
    with pytest.raises(UserError, match="make one with `imf evaluate reference"):
        Reference.load(tmp_path / "missing.npz")


# ---- Inception-v3 (torch-fidelity's architecture, random weights from a local file) -----------------------

@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """torch-fidelity's FID Inception-v3 with random, variance-keeping weights, saved as a user's file would be."""
    cls = fidelity_module("feature_extractor_inceptionv3").FeatureExtractorInceptionV3
    folder = tmp_path_factory.mktemp("inception")
    torch.save({}, folder / "empty.pth")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cls, "load_state_dict", lambda self, *args, **kwargs: None)  # the architecture only
        net = cls("build", ["2048"], feature_extractor_weights_path=str(folder / "empty.pth"))
    g = torch.Generator().manual_seed(0)
    state = {}
    for name, value in net.state_dict().items():
        if name.endswith("conv.weight"):  # He-normal: default init would shrink features to ~1e-8
            value = torch.randn(value.shape, generator=g) * (2.0 / value[0].numel()) ** 0.5
        elif name.startswith("fc."):
            value = torch.randn(value.shape, generator=g) * 3.0 / 2048 ** 0.5
        state[name] = value
    torch.save(state, folder / "inception.pth")
    return folder / "inception.pth"


@pytest.fixture(scope="module")
def images_a():
    return np.random.default_rng(7).integers(0, 256, size=(4, 16, 16, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def inception_outputs(inception_weights, images_a):
    with pytest.MonkeyPatch.context() as mp:
        module = fidelity_module("feature_extractor_inceptionv3")
        mp.setattr(module, "load_state_dict_from_url", lambda *a, **k: pytest.fail("tried to download weights"))
        extractor = InceptionFeatures(inception_weights, device="cpu", batch_size=3)
    return extractor, extractor(images_a)


def test_inception_architecture_runs_from_a_local_random_weights_file(inception_weights, inception_outputs):
    extractor, (features, logits) = inception_outputs
    saved = torch.load(inception_weights, weights_only=True)
    loaded = extractor.net.state_dict()
    assert all(torch.equal(loaded[k].cpu(), v) for k, v in saved.items())
    assert features.shape == (4, 2048) and logits.shape == (4, 1008)
    assert np.isfinite(features).all() and np.isfinite(logits).all()
    assert features.std(axis=0).mean() > 1e-3 and logits.std() > 0.1  # images are told apart


def test_missing_or_foreign_weights_say_where_to_put_them(tmp_path, monkeypatch):
    with pytest.raises(UserError) as err:
        InceptionFeatures(tmp_path / "nowhere.pth")
    assert "nowhere.pth" in str(err.value) and WEIGHTS_URL in str(err.value) and WEIGHTS_ENV in str(err.value)
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "from_env.pth"))
    with pytest.raises(UserError, match=rf"from_env.pth \(\${WEIGHTS_ENV}\)"):
        InceptionFeatures()
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(UserError, match="not a plain PyTorch state dict"):
        InceptionFeatures(tmp_path / "junk.pth")


def test_cli_without_weights_uses_pixel_metrics_and_fails_clearly_for_fid(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no weights in the default place
    ref = digits_reference()
    (tmp_path / "s").mkdir()
    np.savez(tmp_path / "s" / "0.npz", arr_0=ref.images[:200], labels=ref.labels[:200])
    store = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["evaluate", "--samples", str(tmp_path / "s"), "--reference", "digits", "--tracking-uri", store,
                 "--out", str(tmp_path / "m.json")]) == 0
    result = json.loads((tmp_path / "m.json").read_text())
    assert result["cls_acc_digits_test"] > 0.97 and result["precision_k3_pixels_digits_test"] == 1.0
    assert 0.0 < result["recall_k3_pixels_digits_test"] < 1.0  # 200 of the 596 cover only part of the set
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.metrics["cls_acc_digits_test"] == pytest.approx(result["cls_acc_digits_test"])
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["samples_grid.png"]
    assert main(["evaluate", "--samples", str(tmp_path / "s"), "--reference", "digits", "--metrics", "fid",
                 "--tracking-uri", store]) == 2
    assert "Inception-v3 weights not found" in capsys.readouterr().err


def test_cli_reference_then_evaluate_the_same_images_gives_zero_fid(tmp_path, inception_weights, images_a):
    (tmp_path / "a").mkdir()
    for i, image in enumerate(images_a):
        Image.fromarray(image).save(tmp_path / "a" / f"{i}.png")
    weights = ["--inception-weights", str(inception_weights), "--device", "cpu"]
    assert main(["evaluate", "reference", "--images", str(tmp_path / "a"), "--out", str(tmp_path / "ref.npz"),
                 "--name", "tiny", *weights]) == 0
    ref = Reference.load(tmp_path / "ref.npz")
    assert ref.mu.shape == (2048,) and ref.features.shape == (4, 2048) and np.trace(ref.sigma) > 0.01
    assert main(["evaluate", "--samples", str(tmp_path / "a"), "--reference", str(tmp_path / "ref.npz"),
                 "--metrics", "fid,is,pr", "--out", str(tmp_path / "m.json"), *weights]) == 0
    result = json.loads((tmp_path / "m.json").read_text())
    assert abs(result["fid4_tiny"]) < 1e-5 * np.trace(ref.sigma)  # eigenvalue round-off of a rank-3 product
    assert result["precision_k3_inception_tiny"] == result["recall_k3_inception_tiny"] == 1.0
    assert result["is4"] >= 1.0 - 1e-9  # IS >= 1 up to round-off


def test_build_reference_keeps_a_feature_subset_but_full_statistics(tmp_path):
    images = np.random.default_rng(8).integers(0, 256, size=(6, 4, 4, 3), dtype=np.uint8)
    features = np.random.default_rng(9).normal(size=(6, 5)).astype(np.float32)

    def extractor(batch):  # stands in for InceptionFeatures: the same rows in, known features out
        rows = [int(np.flatnonzero((images == im).all(axis=(1, 2, 3)))[0]) for im in batch]
        return features[rows], np.zeros((len(batch), 1008), np.float32)

    np.savez(tmp_path / "a.npz", arr_0=images)
    ref = build_reference(tmp_path / "a.npz", "Sub Set", extractor=extractor, keep=4)
    mu, sigma = M.feature_statistics(features)
    assert np.array_equal(ref.mu, mu) and np.array_equal(ref.sigma, sigma)
    assert ref.features.shape == (4, 5) and all(any((f == features).all(axis=1)) for f in ref.features)
    ref.save(tmp_path / "sub.npz")
    again = Reference.load(tmp_path / "sub.npz")
    assert again.name == "sub_set" and np.array_equal(again.features, ref.features)
    assert np.array_equal(again.images, images) and again.labels is None
