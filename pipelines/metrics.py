"""Sample-quality metrics on in-memory arrays: Fréchet distance, Inception Score, k-NN precision/recall,
pixel-space metrics and a classifier's accuracy on class-conditional samples.

The formulas follow torch-fidelity (the library the authors' evaluation uses) so that, on the same
features, the numbers are the library's.
"""

import numpy as np
import torch


def feature_statistics(features):
    """Mean and covariance of (N, D) features as torch-fidelity computes them (mean in the features' dtype,
    covariance in float64)."""
    features = np.asarray(features)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"statistics need (N >= 2, D) features, got shape {features.shape}")
    return np.mean(features, axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)), the trace of the square root
    taken as the sum of the square roots of the eigenvalues of sigma1 sigma2 (torch-fidelity's way)."""
    mu1, mu2, sigma1, sigma2 = (np.asarray(a) for a in (mu1, mu2, sigma1, sigma2))
    if mu1.ndim != 1 or mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1),) * 2:
        raise ValueError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    tr_covmean = np.sum(np.sqrt(np.linalg.eigvals(sigma1.dot(sigma2)).astype("complex128")).real)
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def fid_from_features(fake_features, real_features=None, *, real_mu=None, real_sigma=None):
    """FID between two feature sets, or between fake features and given reference statistics."""
    if real_features is not None:
        real_mu, real_sigma = feature_statistics(real_features)
    if real_mu is None or real_sigma is None:
        raise ValueError("give real_features or both real_mu and real_sigma")
    return frechet_distance(*feature_statistics(fake_features), real_mu, real_sigma)


def inception_score(logits, splits=10, shuffle=True, seed=2020):
    """Inception Score (mean, std over splits) from (N, classes) logits; torch-fidelity's defaults
    (10 splits, rows shuffled with seed 2020, float64)."""
    logits = torch.as_tensor(np.asarray(logits))
    if logits.dim() != 2 or len(logits) < splits:
        raise ValueError(f"inception_score needs (N >= splits = {splits}, classes) logits, got {tuple(logits.shape)}")
    n = len(logits)
    if shuffle:
        logits = logits[np.random.RandomState(seed).permutation(n)]
    logits = logits.double()
    p, log_p = logits.softmax(dim=1), logits.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        rows = slice(i * n // splits, (i + 1) * n // splits)
        q = p[rows].mean(dim=0, keepdim=True)
        kl = (p[rows] * (log_p[rows] - q.log())).sum(dim=1).mean()
        scores.append(kl.exp().item())
    return float(np.mean(scores)), float(np.std(scores))


def _kth_neighbour_distance(points, k, chunk):
    # k + 1: each point's nearest neighbour in its own set is itself, at distance 0
    return torch.cat([torch.cdist(block, points).kthvalue(k + 1, dim=1).values for block in points.split(chunk)])


def _inside_any_ball(queries, centres, radii, chunk):
    return torch.cat([(torch.cdist(block, centres) <= radii).any(dim=1) for block in queries.split(chunk)])


def knn_precision_recall(real_feats, fake_feats, k=3, chunk=2048):
    """Improved precision and recall (Kynkäänniemi et al. 2019): precision is the share of fake points inside
    some real point's ball reaching its k-th nearest real neighbour; recall swaps the roles. Returns
    (precision, recall)."""
    real, fake = torch.as_tensor(np.asarray(real_feats)), torch.as_tensor(np.asarray(fake_feats))
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, D) with one D: real {tuple(real.shape)}, fake {tuple(fake.shape)}")
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"k = {k} needs more than {k} real and fake points, got {len(real)} and {len(fake)}")
    fake = fake.to(real.dtype)
    precision = _inside_any_ball(fake, real, _kth_neighbour_distance(real, k, chunk), chunk)
    recall = _inside_any_ball(real, fake, _kth_neighbour_distance(fake, k, chunk), chunk)
    return precision.double().mean().item(), recall.double().mean().item()


def pixel_features(images):
    """uint8 images (N, H, W, C) -> (N, H*W*C) float64 in [0, 1]."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"pixel metrics need uint8 images (N, H, W, C), got {images.dtype} {images.shape}")
    return images.reshape(len(images), -1).astype(np.float64) / 255.0


def _same_image_shape(real, fake):
    if np.shape(real)[1:] != np.shape(fake)[1:]:
        raise ValueError(f"real images are {np.shape(real)[1:]} and samples {np.shape(fake)[1:]}: "
                         "pixel metrics compare images of one size")


def pixel_frechet_distance(real_uint8, fake_uint8):
    """Fréchet distance between Gaussians fitted to flattened pixels in [0, 1]."""
    _same_image_shape(real_uint8, fake_uint8)
    return frechet_distance(*feature_statistics(pixel_features(fake_uint8)),
                            *feature_statistics(pixel_features(real_uint8)))


def classifier_accuracy(real_images, real_labels, fake_images, fake_labels):
    """Accuracy on class-conditional samples of an RBF support-vector classifier trained on the real
    images' pixels (about 99% on held-out 8x8 digits): high when each sample shows its class."""
    from sklearn.svm import SVC

    _same_image_shape(real_images, fake_images)
    real_labels, fake_labels = np.asarray(real_labels), np.asarray(fake_labels)
    if len(real_labels) != len(real_images) or len(fake_labels) != len(fake_images):
        raise ValueError(f"labels do not match images: real {len(real_labels)} for {len(real_images)}, "
                         f"samples {len(fake_labels)} for {len(fake_images)}")
    classifier = SVC().fit(pixel_features(real_images), real_labels)
    return float(np.mean(classifier.predict(pixel_features(fake_images)) == fake_labels))
