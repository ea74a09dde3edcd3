"""Scoring image sets: the Reference they are compared with, which metrics a reference allows, and the
metrics themselves keyed by protocol (e.g. `fid50k_in256`, `fd_pixels_digits_test`).

A reference file holds `mu`, `sigma` (Inception pool3 statistics, torch-fidelity's and ADM's key names),
`features` (a subset, for precision/recall), and for images up to 32x32 the images themselves (`arr_0`,
`labels`) for the pixel metrics, which need no downloaded weights. `digits` names the held-out split of the
embedded dataset.
"""

import io
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import metrics as M
from ..data.digits import digits
from ..data.images import as_rgb_uint8
from ..errors import UserError
from ..storage import Location
from .image_sets import PIXEL_LIMIT, Scan, scan_images
from .inception import WEIGHTS_ENV
from .set_check import check_reference

INCEPTION_METRICS = ("fid", "is", "pr")
PIXEL_METRICS = ("fd_pixels", "cls_acc", "pr_pixels")
REFERENCE_FEATURES = 10_000  # Inception feature rows a reference keeps for precision/recall
EMBEDDED_REFERENCE = "digits"


@dataclass
class Reference:
    """What samples are compared with; any part may be missing, and only the metrics it allows run."""
    name: str
    mu: np.ndarray = None
    sigma: np.ndarray = None
    features: np.ndarray = None
    images: np.ndarray = None
    labels: np.ndarray = None

    def save(self, path):
        """To a local path or a bucket; an existing file is replaced whole or not at all."""
        arrays = {"name": np.array(self.name), "mu": self.mu, "sigma": self.sigma, "features": self.features,
                  "arr_0": self.images, "labels": self.labels}
        buffer = io.BytesIO()  # zipfile seeks back while writing: object-store uploads cannot
        np.savez(buffer, **{k: v for k, v in arrays.items() if v is not None})
        Location.of(path).write_bytes(buffer.getvalue())
        return Path(path) if "://" not in str(path) else Location.of(path)

    @classmethod
    def load(cls, path, name=None):
        """A file from `imf evaluate reference`, torch-fidelity/JiT statistics (mu, sigma) or an ADM reference
        batch; `digits` is the embedded dataset."""
        if str(path) == EMBEDDED_REFERENCE and not Path(path).is_file():  # a ./digits image folder is no reference
            return digits_reference()
        path = Location.of(path)
        if not path.is_file():
            raise UserError(f"reference {path} not found: make one with `imf evaluate reference --images DIR "
                            "--out STATS.npz`, or use `digits` for the embedded dataset")
        source = path.path if path.is_local else path.open_input  # a bucket's file: ranged reads, not a copy
        try:
            ref = cls._read(path, source, name)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            reason = "not a zip archive" if "pickled" in str(err) else str(err).splitlines()[0]  # np.load's guess
            raise UserError(f"reference {path} is not a readable .npz ({reason}): it was cut short or damaged; "
                            "make it again with `imf evaluate reference`") from None
        if (ref.mu is None) != (ref.sigma is None):
            raise UserError(f"reference {path} has only one of mu and sigma: remake it with `imf evaluate reference`")
        check_reference(ref, path)
        return ref

    @classmethod
    def _read(cls, path, source, name):
        with np.load(source if path.is_local else source(), allow_pickle=False) as data:
            ref = cls(name or (str(data["name"]) if "name" in data.files else path.name.rsplit(".", 1)[0]))
            for key in ("mu", "sigma", "features", "labels"):
                if key in data.files:
                    setattr(ref, key, data[key])
            if "arr_0" in data.files and _npz_array_size(source if path.is_local else source(), "arr_0") <= PIXEL_LIMIT:
                try:
                    ref.images = as_rgb_uint8(data["arr_0"])
                except ValueError as err:
                    raise UserError(f"reference {path}: {err}; make it again with `imf evaluate reference`") from None
        return ref


def _npz_array_size(path, key):
    """Values per image of an array in an .npz, read from its header (an ADM batch holds gigabytes)."""
    with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape = read(f)[0]
    return int(np.prod(shape[1:]))


def digits_reference():
    """The held-out split of the embedded digits (never trained on), with labels."""
    images, labels = digits("test")
    return Reference("digits_test", images=as_rgb_uint8(images), labels=labels)


def _sanitize(name):
    return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_") or "ref"


def _count_tag(n):
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def choose_metrics(requested, reference, inception_ready):
    """The metrics to compute: `auto` takes every one that the reference and weights allow; a named one that
    cannot run is an error saying what is missing."""
    if requested in (None, "auto"):
        chosen = [m for m in INCEPTION_METRICS if inception_ready] if reference.mu is not None else []
        chosen = [m for m in chosen if m != "pr" or reference.features is not None]
        chosen += [m for m in PIXEL_METRICS if reference.images is not None
                   and (m != "cls_acc" or reference.labels is not None)]
        if not chosen:
            raise UserError(f"reference `{reference.name}` allows no metric here: it has no Inception statistics "
                            "usable without weights and no small images; pass --inception-weights PATH")
        return chosen
    chosen = [m.strip() for m in (requested.split(",") if isinstance(requested, str) else requested) if m.strip()]
    for m in chosen:
        if m not in INCEPTION_METRICS + PIXEL_METRICS:
            raise UserError(f"unknown metric {m!r}: choose from {', '.join(INCEPTION_METRICS + PIXEL_METRICS)}")
        if m in INCEPTION_METRICS and not inception_ready:
            raise UserError(f"metric {m} needs Inception-v3 weights: pass --inception-weights PATH "
                            f"or set {WEIGHTS_ENV}")
        if m == "fid" and reference.mu is None or m == "pr" and reference.features is None:
            what = "statistics" if m == "fid" else "features"
            raise UserError(f"reference `{reference.name}` has no Inception {what} for {m}: remake it with "
                            "`imf evaluate reference` and Inception weights")
        if m in PIXEL_METRICS and reference.images is None:
            raise UserError(f"reference `{reference.name}` holds no images up to 32x32 for {m}")
        if m == "cls_acc" and reference.labels is None:
            raise UserError(f"reference `{reference.name}` has no labels for cls_acc")
    return chosen


def unless_unlabelled(requested, chosen, labels):
    # auto: samples without labels just skip the classifier; named, cls_acc without labels is an error
    return [m for m in chosen if m != "cls_acc" or labels is not None or requested not in (None, "auto")]


def compute_metrics(reference, chosen, scan, k=3):
    """Metrics keyed by protocol name from a Scan (or the same fields) of the samples."""
    ref, n, out = _sanitize(reference.name), _count_tag(scan.count), {}
    if "fid" in chosen:
        if reference.mu.shape != scan.features.shape[1:]:
            raise UserError(f"reference `{reference.name}` statistics have {reference.mu.shape[0]} dims, "
                            f"Inception pool3 has {scan.features.shape[1]}: they come from another network")
        out[f"fid{n}_{ref}"] = M.fid_from_features(scan.features, real_mu=reference.mu, real_sigma=reference.sigma)
    if "is" in chosen:
        out[f"is{n}"], out[f"is{n}_std"] = M.inception_score(scan.logits, splits=min(10, scan.count))
    if "pr" in chosen:
        p, r = M.knn_precision_recall(reference.features, scan.features, k=k)
        out[f"precision_k{k}_inception_{ref}"], out[f"recall_k{k}_inception_{ref}"] = p, r
    if set(chosen) & set(PIXEL_METRICS) and scan.images is None:
        raise UserError("samples are larger than 32x32: pixel metrics compare small images only")
    if "fd_pixels" in chosen:
        out[f"fd_pixels_{ref}"] = M.pixel_frechet_distance(reference.images, scan.images)
    if "pr_pixels" in chosen:
        p, r = M.knn_precision_recall(M.pixel_features(reference.images), M.pixel_features(scan.images), k=k)
        out[f"precision_k{k}_pixels_{ref}"], out[f"recall_k{k}_pixels_{ref}"] = p, r
    if "cls_acc" in chosen:
        if scan.labels is None:
            raise UserError("cls_acc needs the samples' labels (npz `labels` or Parquet `label`)")
        out[f"cls_acc_{ref}"] = M.classifier_accuracy(reference.images, reference.labels, scan.images, scan.labels)
    return out


def evaluate_images(images, labels=None, *, reference, metrics="auto", extractor=None, k=3):
    """In-memory evaluation (e.g. one omega of a sweep): uint8 images, numpy (N, H, W, 3) or torch (N, C, H, W),
    against a Reference; `extractor` an InceptionFeatures, loaded once by the caller."""
    images = as_rgb_uint8(images)
    chosen = unless_unlabelled(metrics, choose_metrics(metrics, reference, extractor is not None), labels)
    features, logits = extractor(images) if set(chosen) & set(INCEPTION_METRICS) else (None, None)
    small = images if int(np.prod(images.shape[1:])) <= PIXEL_LIMIT else None
    scan = Scan(len(images), features, logits, small, None if labels is None else np.asarray(labels))
    return compute_metrics(reference, chosen, scan, k=k)


def build_reference(path, name=None, extractor=None, batch_size=256, crop=None, keep=REFERENCE_FEATURES, seed=0):
    """A Reference from an image set (or `digits`): Inception statistics if an extractor is given, the images
    and labels if small."""
    if str(path) == EMBEDDED_REFERENCE and not Path(path).exists():
        base = digits_reference()
        features, logits = extractor(base.images) if extractor else (None, None)
        scan = Scan(len(base.images), features, logits, base.images, base.labels)
    else:
        scan = scan_images(path, extractor, batch_size, crop)
    ref = Reference(_sanitize(name or Path(path).name), images=scan.images, labels=scan.labels)
    if scan.features is not None:
        ref.mu, ref.sigma = M.feature_statistics(scan.features)
        rows = np.random.default_rng(seed).permutation(scan.count)[:keep]
        ref.features = scan.features[np.sort(rows)]
    return ref




def digits_baselines(num: int = 1000, metrics: str = "fd_pixels,pr_pixels") -> dict:
    """What the held-out digits score against two stand-ins for a generator, with the same metric code:
    `real digits` (num training digits: the floor a perfect generator would reach) and `class means`
    (each class's mean training image, num times: no diversity at all)."""
    images, labels = digits("train")
    order = np.random.default_rng(0).permutation(len(images))[:num]
    means = np.stack([images[labels == c].mean(0) for c in range(10)])
    mean_labels = np.arange(num) % 10
    reference = digits_reference()
    stand_ins = {"real digits": (images[order], labels[order]),
                 "class means": (np.rint(means[mean_labels]).astype(np.uint8), mean_labels)}
    return {name: evaluate_images(as_rgb_uint8(x), y, reference=reference, metrics=metrics)
            for name, (x, y) in stand_ins.items()}
