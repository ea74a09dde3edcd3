"""The parity fixture: one step of the authors' JAX trainer on fixed draws (fixtures/imf_jax_step_tiny.README.md).

Its network, weights, batch and draws in this project's layout, for tests/core/test_parity.py and
bench/tangent_accuracy.py.
"""

import re
from pathlib import Path

import numpy as np
import torch

from imf_core import StepDraws, build_model

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "imf_jax_step_tiny.npz"


def load() -> dict:
    if not FIXTURE.exists():
        raise FileNotFoundError(f"parity fixture not found at {FIXTURE}")
    return np.load(FIXTURE, allow_pickle=False)


def torch_name(flax_path: str) -> str:
    name = flax_path.removeprefix("net/")
    name = re.sub(r"mlp/layers_(\d+)", r"mlp/\1", name)
    name = re.sub(r"_(\d+)/", r".\1/", name)
    name = name.replace("/", ".")
    return re.sub(r"\.(kernel|embedding)$", ".weight", name)


def to_torch_layout(name: str, array: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(array, dtype=np.float32))
    if name == "x_embedder.proj.weight":
        return t.permute(3, 2, 0, 1).contiguous()  # (kh, kw, in, out) -> (out, in, kh, kw)
    if name.endswith("_flax_linear.weight"):
        return t.t().contiguous()  # (in, out) -> (out, in)
    return t


def build_network(data):
    cfg = eval(str(data["config"]), {})  # a plain dict literal of ints
    net = build_model(
        "B/2", hidden_size=cfg["hidden_size"], depth=cfg["depth"], num_heads=cfg["num_heads"],
        aux_head_depth=cfg["aux_head_depth"], patch_size=cfg["patch_size"], input_size=cfg["input_size"],
        in_channels=4, num_classes=1000,
    )
    state = {torch_name(k[len("param/"):]): to_torch_layout(torch_name(k[len("param/"):]), data[k])
             for k in data.files if k.startswith("param/")}
    net.load_state_dict(state, strict=True)
    return net


def batch(data, dtype=torch.float32):
    """(x, y, draws) of the fixture's step, channels first."""
    x = torch.from_numpy(data["x_nhwc"]).permute(0, 3, 1, 2).to(dtype)
    e = torch.from_numpy(data["e_nhwc"]).permute(0, 3, 1, 2).to(dtype)
    y = torch.from_numpy(data["y"]).long()
    as_t = lambda k: torch.from_numpy(np.asarray(data[k], dtype=np.float32)).to(dtype)  # noqa: E731
    draws = StepDraws(t=as_t("t"), r=as_t("r"), noise=e, omega=as_t("omega"), t_min=as_t("t_min"),
                      t_max=as_t("t_max"), drop=torch.arange(x.shape[0]) < int(data["num_drop"]))
    return x, y, draws


def gradients(data) -> dict:
    """{parameter name: the JAX step's gradient of the loss}, in this project's layout."""
    out = {}
    for key in (k for k in data.files if k.startswith("grad/")):
        name = torch_name(key[len("grad/"):])
        out[name] = to_torch_layout(name, data[key])
    return out
