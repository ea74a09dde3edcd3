"""A small training checkpoint and model folder made without training (random weights)."""

from pathlib import Path

import torch

from pipelines.config import config_from_dict
from pipelines.train.state import TrainState
from tests.conftest import randomize

PIXEL_CODEC = {"codec": "pixels", "weights": "", "channels": 3, "channel_mean": [0.0] * 3, "channel_std": [1.0] * 3}
DATASET = {"codec": PIXEL_CODEC, "latent_shape": [3, 8, 8], "resolution": 8, "num_classes": 4,
           "class_names": ["a", "b", "c", "d"], "flip": False}


def fake_checkpoint(directory: Path, seed=0) -> Path:
    cfg = config_from_dict({"model": {"name": "Micro/2"}, "train": {"ema_decays": [0.9], "batch_size": 4},
                            "sampling": {"omegas": [1.0, 3.0], "t_min": 0.2, "t_max": 0.8}})
    state = TrainState(cfg, (3, 8, 8), 4, "cpu")
    randomize(state.model, std=0.1, seed=seed)
    state.ema.update(state.model)
    state.save(directory, extra={"data": None, "dataset": DATASET})
    return directory


def model_folder(tmp: Path, seed=0) -> Path:
    from pipelines.models.artifact import folder_from_checkpoint

    return folder_from_checkpoint(fake_checkpoint(tmp / f"ckpt{seed}", seed), tmp / f"model{seed}")


def ema_network(checkpoint: Path):
    from imf_core import load_model

    folder = model_folder_path = checkpoint.parent / (checkpoint.name + "_ema")
    from pipelines.models.artifact import folder_from_checkpoint

    folder_from_checkpoint(checkpoint, model_folder_path)
    return load_model(folder).eval()


@torch.no_grad()
def reference_images(net, labels, seeds, indices, omega, t_min, t_max):
    """Images of (seed, index) pairs, sampled directly with imf_core (the noise of image `index` of request `seed`)."""
    from imf_core import index_noise, sample, to_uint8

    noise = torch.cat([index_noise(int(s), [int(i)], (3, 8, 8)) for s, i in zip(seeds, indices)])
    z = sample(net, noise, torch.as_tensor(labels), omega=omega, t_min=t_min, t_max=t_max, steps=1)
    return to_uint8(z.clamp(-1, 1)).permute(0, 2, 3, 1).numpy()
