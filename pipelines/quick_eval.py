"""A quality metric computed during training (for ASHA and training curves).

The reference is a few hundred training images (posterior means decoded by the codec),
made once by the driver; rank 0 generates as many 1-NFE samples from the EMA network
at each configured omega and reports the Fréchet distance in pixel space (images larger
than 32 px are area-downsampled to 32 px first), `quick_fd`, at the best omega.
"""

import copy

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from imf_core import sample, to_uint8
from imf_core.codecs import codec_from_description

from .metrics import pixel_frechet_distance
from .shards import shard_files

MAX_SIDE = 32


def small_uint8(images: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1] (N, C, H, W) -> uint8 (N, h, w, 3) with h, w <= 32."""
    if images.shape[-1] > MAX_SIDE:
        images = F.adaptive_avg_pool2d(images.float(), MAX_SIDE)
    pixels = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
    return np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels


def reference_images(latent_dir, manifest: dict, count: int, device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """The first `count` images of the shards (every shard contributes), decoded from their posterior means."""
    files = shard_files(latent_dir)
    per_file = -(-count // len(files))
    tables = [pq.read_table(f, columns=["label", "moments"]).slice(0, per_file) for f in files]
    labels = np.concatenate([t.column("label").to_numpy() for t in tables])[:count]
    moments = np.concatenate([np.stack(t.column("moments").to_numpy(zero_copy_only=False)) for t in tables])[:count]
    C, H, W = manifest["latent_shape"]
    mean = torch.from_numpy(moments[:, : C * H * W].astype(np.float32)).view(-1, C, H, W)
    codec = codec_from_description(manifest["codec"], device=device)
    images = torch.cat([codec.decode(chunk.to(device)).cpu() for chunk in mean.split(64)])
    return small_uint8(images), labels


class QuickEval:
    def __init__(self, state, manifest, reference: np.ndarray, labels: np.ndarray, seed: int = 1):
        self.state, self.manifest = state, manifest
        self.reference, self.labels = reference, torch.as_tensor(labels, dtype=torch.long)
        self.codec = codec_from_description(manifest["codec"], device=state.device)
        self.net = copy.deepcopy(state.model).eval()
        g = torch.Generator().manual_seed(seed)
        self.noise = torch.randn((len(labels), *manifest["latent_shape"]), generator=g)

    def __call__(self) -> dict:
        s, cfg = self.state, self.state.cfg.sampling
        s.ema.copy_to(self.net)
        scores = {}
        for omega in cfg.omegas:
            images = []
            for noise, labels in zip(self.noise.split(128), self.labels.split(128)):
                with s.autocast():
                    z = sample(self.net, noise.to(s.device), labels.to(s.device), omega=omega, t_min=cfg.t_min,
                               t_max=cfg.t_max, steps=1)
                images.append(self.codec.decode(z.float()).cpu())
            scores[omega] = pixel_frechet_distance(self.reference, small_uint8(torch.cat(images)))
        best = min(scores, key=scores.get)
        return {"quick_fd": scores[best], "quick_fd_best_omega": best,
                **{f"quick_fd_omega_{w:g}": v for w, v in scores.items()}}
