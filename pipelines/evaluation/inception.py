"""The FID Inception-v3 of torch-fidelity (the authors' evaluation library), loaded from a local weights file.

torch-fidelity is installed without its dependencies (`pip install --no-deps torch-fidelity`): its package
__init__ imports torchvision for other extractors, and torchvision's PyPI wheels do not load beside the CPU
build of torch. The Inception-v3 module itself needs only torch, so it is imported without that __init__.
Weights are never downloaded: the file comes from --inception-weights, $IMF_INCEPTION_WEIGHTS, or torch's
hub cache where torch-fidelity itself would have put it.
"""

import os
import sys
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .fidelity_seams import fidelity_module

WEIGHTS_ENV = "IMF_INCEPTION_WEIGHTS"
WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_FILE}"
FEATURES = ("2048", "logits_unbiased")  # pool3 features for FID and precision/recall, logits for IS


def default_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def resolve_weights(path=None) -> Path:
    """The weights file to use, or a UserError saying where to put one."""
    given = path or os.environ.get(WEIGHTS_ENV)
    candidate = Path(given).expanduser() if given else default_weights_path()
    if candidate.is_file():
        return candidate
    source = "--inception-weights" if path else f"${WEIGHTS_ENV}" if given else "the default location"
    raise UserError(
        f"Inception-v3 weights not found at {candidate} ({source}). Nothing is downloaded at run time: fetch "
        f"{WEIGHTS_URL} on a machine with internet, then pass --inception-weights PATH, set {WEIGHTS_ENV}=PATH, "
        f"or copy it to {default_weights_path()}. Without weights, evaluate with the pixel metrics "
        "(--metrics fd_pixels,cls_acc,pr_pixels)")


def _check_plain_state_dict(path: Path):
    # torch-fidelity unpickles the file with weights_only=False; refuse anything but tensors first
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"{path} is not a plain PyTorch state dict ({type(err).__name__}); use torch-fidelity's "
                        f"{WEIGHTS_FILE} from {WEIGHTS_URL}") from err
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise UserError(f"{path} holds no Inception-v3 state dict (no 'fc.weight'); use torch-fidelity's "
                        f"{WEIGHTS_FILE} from {WEIGHTS_URL}")


class InceptionFeatures:
    """uint8 images (N, H, W, 3) -> pool3 features (N, 2048) and unbiased logits (N, 1008), float32 numpy.

    Any image size: the network resizes to 299x299 as TensorFlow 1.x did, exactly as torch-fidelity does."""

    def __init__(self, weights=None, device=None, batch_size=64):
        path = resolve_weights(weights)
        _check_plain_state_dict(path)
        module = fidelity_module("feature_extractor_inceptionv3")
        try:
            net = module.FeatureExtractorInceptionV3("inception-v3-compat", list(FEATURES),
                                                     feature_extractor_weights_path=str(path))
        except RuntimeError as err:  # load_state_dict: wrong keys or shapes
            raise UserError(f"{path} does not fit torch-fidelity's Inception-v3: {str(err).splitlines()[0]}; "
                            f"use {WEIGHTS_FILE} from {WEIGHTS_URL}") from err
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net = net.to(self.device)
        self.batch_size = batch_size
        self.weights = path

    @torch.no_grad()
    def __call__(self, images):
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"Inception features need uint8 RGB images (N, H, W, 3), got {images.dtype} "
                             f"{images.shape}")
        features, logits = [], []
        for start in range(0, len(images), self.batch_size):
            batch = torch.from_numpy(images[start:start + self.batch_size]).permute(0, 3, 1, 2)
            f, lg = self.net(batch.to(self.device))
            features.append(f.cpu().numpy())
            logits.append(lg.cpu().numpy())
        if not features:
            return np.zeros((0, 2048), np.float32), np.zeros((0, 1008), np.float32)
        return np.concatenate(features), np.concatenate(logits)


def inception_extractor(weights, device, batch_size, required: bool):
    """An InceptionFeatures, or None (pixel metrics only) when no weights are installed and none are required."""
    nothing_given = not weights and not os.environ.get(WEIGHTS_ENV)
    if not required and nothing_given and not default_weights_path().is_file():
        print(f"imf evaluate: no Inception-v3 weights ({WEIGHTS_ENV} unset, none at {default_weights_path()}): "
              "pixel metrics only", file=sys.stderr)
        return None
    return InceptionFeatures(weights, device, batch_size)
