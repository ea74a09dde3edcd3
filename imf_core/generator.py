"""A generator folder: what it takes to make images from noise, in one place on disk.

    model.safetensors   the inference network (u-branch only)
    config.json         {"model": network kwargs, "codec": codec description, "latent_shape",
                         "resolution", "num_classes", "class_names", "guidance": {omega, t_min, t_max, steps}, ...}
    vae/                the VAE weights, when the codec's weights were a local folder

`load_generator(folder)` gives the network, the codec and the config; `Generator.images` makes the
images of (seed, index) pairs, the one way every entry point (batch sampling, the MLflow pyfunc,
the server, evaluation sweeps) turns a request into pixels.
"""

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import load_model, read_config, save_model
from .codecs import codec_from_description
from .model import IMFDiT
from .sampling import generate, index_noise

DEFAULT_GUIDANCE = {"omega": 1.0, "t_min": 0.0, "t_max": 1.0, "steps": 1}


def save_generator(folder, net: IMFDiT, codec: dict, latent_shape, resolution: int, num_classes: int,
                   class_names=None, guidance: dict | None = None, extra: dict | None = None) -> Path:
    """Write a generator folder; a v-branch of `net` is left out, a local VAE folder is copied in."""
    folder = Path(folder)
    lean = IMFDiT(**{**net.config, "v_head": False})
    lean.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("v_heads.")})
    save_model(folder, lean, extra={"codec": codec, "latent_shape": list(latent_shape), "resolution": resolution,
                                    "num_classes": num_classes, "class_names": class_names,
                                    "guidance": {**DEFAULT_GUIDANCE, **(guidance or {})}, **(extra or {})})
    weights = codec.get("weights", "")
    if weights and Path(weights).is_dir():
        shutil.copytree(weights, folder / "vae", dirs_exist_ok=True)
    return folder


@dataclass
class Generator:
    net: IMFDiT
    codec: object
    config: dict

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def num_classes(self) -> int:
        return int(self.config["num_classes"])

    @property
    def guidance(self) -> dict:
        return {**DEFAULT_GUIDANCE, **self.config.get("guidance", {})}

    def check_classes(self, classes):
        """A ValueError naming the classes outside 0..num_classes-1 (the null class is not a request)."""
        bad = sorted({int(c) for c in classes if not 0 <= int(c) < self.num_classes})
        if bad:
            raise ValueError(f"classes {bad} are outside 0..{self.num_classes - 1}: this model has "
                             f"{self.num_classes} classes")

    def images(self, seed, indices, labels, omega=None, t_min=None, t_max=None, steps=None,
               batch_size: int = 256) -> torch.Tensor:
        """uint8 images (N, C, H, W) of (seed, index) pairs with the given labels; guidance defaults to the
        folder's stored setting. `seed` is one number or one per row, and omega/t_min/t_max may be one value
        per row."""
        g = self.guidance
        labels = torch.as_tensor(labels, dtype=torch.long)
        self.check_classes(labels.tolist())
        noise = index_noise(seed, indices, self.config["latent_shape"])
        autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if self.device.type == "cuda" else None
        return generate(self.net, self.codec, noise, labels,
                        omega=g["omega"] if omega is None else omega, t_min=g["t_min"] if t_min is None else t_min,
                        t_max=g["t_max"] if t_max is None else t_max, steps=int(steps or g["steps"]),
                        batch_size=batch_size, autocast=autocast or contextlib.nullcontext)


def load_generator(folder, device=None) -> Generator:
    """Network (u-branch, eval mode), codec and config of a generator folder."""
    folder = Path(folder)
    config = read_config(folder)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net = load_model(folder, device=device, v_head=False).eval()
    vae = folder / "vae"
    codec = codec_from_description(config["codec"], device=device, weights=str(vae) if vae.is_dir() else None)
    return Generator(net, codec, config)
