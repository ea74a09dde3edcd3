"""Codecs between images in [-1, 1] (NCHW) and the latents the network models.

One interface: `encode(images) -> (mean, std)` posterior moments, `decode(latents) -> images`,
`latent_shape(resolution)` and `describe()` (what shard metadata records). Training draws a fresh
latent from the stored moments each time one is used: `posterior_sample(mean, std, generator)`.
A codec is registered in CODECS by its name; `make_codec` and `codec_from_description` build it.
"""

from pathlib import Path

import torch

# Per-channel statistics of SD-VAE ft-MSE latents on ImageNet 256 (iMF; docs/method.md, "Latents").
SD_VAE_MEAN = (0.86488, -0.27787343, 0.21616915, 0.3738409)
SD_VAE_STD = (4.85503674, 5.31922414, 3.93725398, 3.9870003)


def posterior_sample(mean, std, generator=None):
    """mean + std * noise: one draw of the latent posterior, the noise from `generator` (on its device)."""
    device = mean.device if generator is None else generator.device
    return mean + std * torch.randn(mean.shape, generator=generator, device=device).to(mean.device)


class PixelCodec:
    """Identity on pixels scaled to [-1, 1]: mean = image, std = 0."""

    name = "pixels"

    def __init__(self, channels: int = 3):
        self.channels = channels

    @classmethod
    def create(cls, weights=None, device="cpu", channels: int = 3, **kwargs):
        return cls(channels)

    @classmethod
    def from_description(cls, info: dict, device="cpu", weights=None, **kwargs):
        return cls(int(info["channels"]))

    def encode(self, images):
        return images.float(), torch.zeros_like(images, dtype=torch.float32)

    def decode(self, latents):
        return latents.clamp(-1, 1)

    def latent_shape(self, resolution: int):
        return (self.channels, resolution, resolution)

    def describe(self) -> dict:
        return {"codec": self.name, "weights": "", "channels": self.channels,
                "channel_mean": [0.0] * self.channels, "channel_std": [1.0] * self.channels}


class SDVAECodec:
    """diffusers AutoencoderKL (e.g. stabilityai/sd-vae-ft-mse) with per-channel normalisation.

    `source` is a local folder written by `save_pretrained` or a hub id; a hub id is
    only resolved from the local cache unless `allow_download` is set.
    """

    name = "sd-vae"

    def __init__(self, source, device="cpu", dtype=torch.float32, channel_mean=SD_VAE_MEAN,
                 channel_std=SD_VAE_STD, allow_download=False):
        from diffusers import AutoencoderKL

        local = Path(source).is_dir()
        try:
            self.vae = AutoencoderKL.from_pretrained(
                str(source), torch_dtype=dtype, local_files_only=local or not allow_download)
        except (OSError, ValueError) as err:
            raise FileNotFoundError(
                f"cannot load the VAE from {source!r} ({err.__class__.__name__}: {err}). Pass a folder "
                "written by AutoencoderKL.save_pretrained, or a hub id already in the local cache."
            ) from err
        self.vae.eval().requires_grad_(False).to(device)
        if torch.device(device).type == "cuda":
            self.vae.to(memory_format=torch.channels_last)
        self.source, self.device, self.dtype = str(source), torch.device(device), dtype
        channels = self.vae.config.latent_channels
        if len(channel_mean) != channels or len(channel_std) != channels:
            raise ValueError(f"{channels}-channel VAE needs {channels} channel statistics, "
                             f"got {len(channel_mean)} means and {len(channel_std)} stds")
        self.mean = torch.tensor(channel_mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(channel_std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.downsample = 2 ** (len(self.vae.config.block_out_channels) - 1)

    @classmethod
    def create(cls, weights=None, device="cpu", channels: int = 3, **kwargs):
        if not weights:
            raise ValueError("the sd-vae codec needs weights: a save_pretrained folder or a hub id "
                             "(e.g. stabilityai/sd-vae-ft-mse, already downloaded)")
        if channels != 3:
            raise ValueError(f"the sd-vae codec encodes RGB images, not {channels}-channel ones "
                             "(--grayscale is for the pixels codec)")
        return cls(weights, device=device, **kwargs)

    @classmethod
    def from_description(cls, info: dict, device="cpu", weights=None, **kwargs):
        return cls(weights or info["weights"], device=device, channel_mean=tuple(info["channel_mean"]),
                   channel_std=tuple(info["channel_std"]), **kwargs)

    @torch.no_grad()
    def encode(self, images):
        x = images.to(self.device, self.dtype)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        posterior = self.vae.encode(x).latent_dist
        return (posterior.mean.float() - self.mean) / self.std, posterior.std.float() / self.std

    @torch.no_grad()
    def decode(self, latents):
        z = (latents.to(self.device).float() * self.std + self.mean).to(self.dtype)
        if self.device.type == "cuda":
            z = z.contiguous(memory_format=torch.channels_last)
        return self.vae.decode(z).sample.float().clamp(-1, 1)

    def latent_shape(self, resolution: int):
        if resolution % self.downsample:
            raise ValueError(f"resolution {resolution} is not a multiple of the VAE's downsampling {self.downsample}")
        side = resolution // self.downsample
        return (self.vae.config.latent_channels, side, side)

    def describe(self) -> dict:
        return {"codec": self.name, "weights": self.source, "channels": self.vae.config.latent_channels,
                "channel_mean": self.mean.flatten().tolist(), "channel_std": self.std.flatten().tolist()}


CODECS = {codec.name: codec for codec in (PixelCodec, SDVAECodec)}


def make_codec(name: str, weights=None, device="cpu", channels: int = 3, **kwargs):
    """make_codec("pixels", channels=3) or make_codec("sd-vae", weights=PATH_OR_HUB_ID)."""
    if name not in CODECS:
        raise ValueError(f"unknown codec {name!r}; choose one of {', '.join(repr(n) for n in CODECS)}")
    return CODECS[name].create(weights=weights, device=device, channels=channels, **kwargs)


def codec_from_description(info: dict, device="cpu", weights=None, **kwargs):
    """Rebuild the codec recorded by `describe()` (e.g. from shard metadata); `weights` replaces its source."""
    if info.get("codec") not in CODECS:
        raise ValueError(f"unknown codec {info.get('codec')!r} in {info}; this imf knows {', '.join(CODECS)}")
    return CODECS[info["codec"]].from_description(info, device=device, weights=weights, **kwargs)
