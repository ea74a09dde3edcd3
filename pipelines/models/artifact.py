"""The model artifact: a training checkpoint's EMA network as a generator folder (imf_core.generator).

A registered version's `imf_model` artifact is such a folder; `pipelines.models.registry` logs and
finds it, `imf_core.load_generator` reads it (in every step, and in the MLflow pyfunc).
"""

from pathlib import Path

from safetensors.torch import load_file

from imf_core import save_generator
from imf_core.checkpoint import load_strict, read_config
from imf_core.model import IMFDiT

from ..data.shards import dataset_summary
from ..errors import UserError


def folder_from_checkpoint(checkpoint, out, manifest: dict | None = None, guidance: dict | None = None,
                           decay=None) -> Path:
    """Turn a training checkpoint (model/, ema.safetensors) into an imf model folder with EMA weights.

    `manifest` (codec, shapes, classes) defaults to the dataset summary the checkpoint carries."""
    checkpoint, out = Path(checkpoint), Path(out)
    if not (checkpoint / "model" / "config.json").is_file():
        raise UserError(f"{checkpoint} is not an imf training checkpoint (no model/config.json)")
    saved = read_config(checkpoint / "model")
    manifest = manifest or saved.get("dataset")
    if not manifest:
        raise UserError(f"{checkpoint} does not record its dataset: pass the latent folder it was trained on")
    net = IMFDiT(**saved["model"])
    weights = load_file(str(checkpoint / "model" / "model.safetensors"))
    ema_file = checkpoint / "ema.safetensors"
    if ema_file.is_file():
        ema = load_file(str(ema_file))
        decays = sorted({k.split("/")[0] for k in ema})
        chosen = f"ema_{decay}" if decay is not None else decays[0]
        if chosen not in decays:
            raise UserError(f"{checkpoint} has EMA decays {', '.join(decays)}, not {chosen}")
        weights = {**weights, **{k.split("/", 1)[1]: v for k, v in ema.items() if k.startswith(chosen + "/")}}
    load_strict(net, weights, source=str(checkpoint))
    train_cfg = saved.get("train_config", {})
    sampling = train_cfg.get("sampling", {})
    guidance = guidance or {"omega": max(sampling.get("omegas", [1.0])), "t_min": sampling.get("t_min", 0.0),
                            "t_max": sampling.get("t_max", 1.0), "steps": 1}
    return save_generator(out, net, manifest["codec"], manifest["latent_shape"], manifest["resolution"],
                          manifest["num_classes"], manifest.get("class_names"), guidance,
                          extra={"train_config": train_cfg, "source": str(checkpoint),
                                 "dataset": dataset_summary(manifest)})
