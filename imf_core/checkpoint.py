"""Networks on disk: safetensors for tensors and JSON for the configuration; no pickle.

Also loads the authors' released inference checkpoints (`iMF-B-2.pth` ...), which
are plain state dicts of `iMeanFlow` (keys prefixed `net.`), read with
`torch.load(weights_only=True)`.
"""

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .model import IMFDiT, build_model

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def write_atomic(path, write) -> Path:
    """write(temporary path) then rename onto `path`: a killed process never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_tensors(path, tensors: dict, metadata: dict | None = None):
    """Write {name: tensor} as safetensors, atomically."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def save_model(directory, model: IMFDiT, extra: dict | None = None):
    """directory/model.safetensors + directory/config.json ({"model": kwargs, **extra})."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_tensors(directory / WEIGHTS, model.state_dict())
    text = json.dumps({"model": model.config, **(extra or {})}, indent=2)
    write_atomic(directory / CONFIG, lambda tmp: tmp.write_text(text))


def read_config(directory) -> dict:
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a model folder written by imf_core.save_model")
    return json.loads(path.read_text())


def load_model(directory, device="cpu", v_head: bool | None = None) -> IMFDiT:
    """Rebuild the network from config.json and load its weights strictly.

    v_head=False drops a trained v-branch (inference needs only the u-branch).
    """
    kwargs = dict(read_config(directory)["model"])
    if v_head is not None:
        kwargs["v_head"] = v_head
    model = IMFDiT(**kwargs)
    state = load_file(str(Path(directory) / WEIGHTS), device=str(device))
    if not kwargs["v_head"]:
        state = {k: v for k, v in state.items() if not k.startswith("v_heads.")}
    load_strict(model, state, source=str(Path(directory) / WEIGHTS))
    return model.to(device)


def load_strict(model: torch.nn.Module, state: dict, source: str):
    """load_state_dict(strict=True), with one error naming every missing, extra or misshapen key."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshapen = sorted(
        f"{k}: file {tuple(state[k].shape)} vs network {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or misshapen:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", misshapen)):
            if keys:
                shown = ", ".join(keys[:20]) + (f" (+{len(keys) - 20} more)" if len(keys) > 20 else "")
                parts.append(f"{label} ({len(keys)}): {shown}")
        raise ValueError(
            f"{source} does not fit the network: " + "; ".join(parts)
            + ". Check the model size (and input_size/num_classes) it was trained with."
        )
    model.load_state_dict(state, strict=True)


def load_official(path, size: str, device="cpu", **overrides) -> IMFDiT:
    """The authors' released PyTorch checkpoint (e.g. iMF-XL-2.pth) for size "XL/2".

    Inference-only: built without the v-branch, as the file has none.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official checkpoint {path} not found "
                                "(download iMF-*-2.pth from the authors' release)")
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    state = {k.removeprefix("net."): v for k, v in state.items()}
    model = build_model(size, **{"v_head": False, **overrides})
    load_strict(model, state, source=str(path))
    return model.to(device)
