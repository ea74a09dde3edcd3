"""What rank 0 watches during training: 1-NFE sample grids and `quick_fd`, both from the EMA network.

`quick_fd` is the Fréchet distance in pixel space (images larger than 32 px are area-downsampled to
32 px first) between 1-NFE samples at each configured omega and a few hundred training images
(posterior means decoded by the codec), made once by the driver; reported at the best omega. It is a
cheap training curve and what ASHA ranks Tune trials on, not an evaluation protocol.
"""

import copy

import numpy as np
import torch
import torch.nn.functional as F

from imf_core import generate, to_uint8
from imf_core.codecs import codec_from_description

from ..data.images import as_rgb_uint8, save_grid
from ..data.shards import read_shard, shard_locations
from ..metrics import pixel_frechet_distance

MAX_SIDE = 32


def small_uint8(images: torch.Tensor) -> np.ndarray:
    """uint8 images (N, C, H, W) -> uint8 (N, h, w, 3) with h, w <= 32."""
    if images.shape[-1] > MAX_SIDE:
        images = to_uint8(F.adaptive_avg_pool2d(images.float() / 127.5 - 1, MAX_SIDE))
    return as_rgb_uint8(images)


class EMASampler:
    """A copy of the network holding the first EMA's weights; makes 1-NFE images with the data's codec."""

    def __init__(self, state, manifest: dict):
        self.state, self.manifest = state, manifest
        self.codec = codec_from_description(manifest["codec"], device=state.device)
        self.net = copy.deepcopy(state.model).eval()

    def images(self, noise, labels, omega, t_min, t_max) -> torch.Tensor:
        """uint8 (N, C, H, W) samples from the EMA weights as they are now."""
        self.state.ema.copy_to(self.net)
        return generate(self.net, self.codec, noise, labels, omega=omega, t_min=t_min, t_max=t_max, steps=1,
                        batch_size=128, autocast=self.state.autocast)


class SampleGrids:
    """1-NFE sample grids at fixed seeds, one PNG per configured omega (rank 0); never fails a run."""

    def __init__(self, state, manifest: dict):
        self.state, self.manifest, self.sampler, self.failed = state, manifest, None, False

    def __call__(self, out_dir) -> list:
        cfg = self.state.cfg.sampling
        if self.sampler is None and not self.failed:
            try:
                self.sampler = EMASampler(self.state, self.manifest)
            except Exception as err:  # noqa: BLE001 - grids are a convenience, never a failure
                print(f"sample grids disabled: cannot load the codec ({err})", flush=True)
                self.failed = True
        if self.failed:
            return []
        classes = min(self.manifest["num_classes"], cfg.max_classes)
        labels = torch.arange(classes).repeat_interleave(cfg.per_class)
        noise = torch.randn((len(labels), *self.manifest["latent_shape"]),
                            generator=torch.Generator().manual_seed(cfg.seed))
        paths = []
        for omega in cfg.omegas:
            images = self.sampler.images(noise, labels, omega, cfg.t_min, cfg.t_max)
            paths.append(save_grid(as_rgb_uint8(images), out_dir / f"omega_{omega:g}.png", columns=cfg.per_class,
                                   scale=max(1, 64 // images.shape[-1])))
        return paths


def reference_images(latent_dir, manifest: dict, count: int, device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """The first `count` images of the shards (every shard contributes), decoded from their posterior means."""
    files = shard_locations(latent_dir)
    per_file = -(-count // len(files))
    tables = [read_shard(f, columns=["label", "moments"]).slice(0, per_file) for f in files]
    labels = np.concatenate([t.column("label").to_numpy() for t in tables])[:count]
    moments = np.concatenate([np.stack(t.column("moments").to_numpy(zero_copy_only=False)) for t in tables])[:count]
    C, H, W = manifest["latent_shape"]
    mean = torch.from_numpy(moments[:, : C * H * W].astype(np.float32)).view(-1, C, H, W)
    codec = codec_from_description(manifest["codec"], device=device)
    images = torch.cat([to_uint8(codec.decode(chunk.to(device))).cpu() for chunk in mean.split(64)])
    return small_uint8(images), labels


class QuickEval:
    """`quick_fd` of the EMA network at each configured omega, against the driver's reference images."""

    def __init__(self, state, manifest, reference: np.ndarray, labels: np.ndarray, seed: int = 1):
        self.state, self.reference = state, reference
        self.labels = torch.tensor(np.asarray(labels), dtype=torch.long)  # a copy: labels may be read-only
        self.sampler = EMASampler(state, manifest)
        self.noise = torch.randn((len(labels), *manifest["latent_shape"]),
                                 generator=torch.Generator().manual_seed(seed))

    def __call__(self) -> dict:
        cfg = self.state.cfg.sampling
        scores = {}
        for omega in cfg.omegas:
            images = self.sampler.images(self.noise, self.labels, omega, cfg.t_min, cfg.t_max)
            scores[omega] = pixel_frechet_distance(self.reference, small_uint8(images))
        best = min(scores, key=scores.get)
        return {"quick_fd": scores[best], "quick_fd_best_omega": best,
                **{f"quick_fd_omega_{w:g}": v for w, v in scores.items()}}
