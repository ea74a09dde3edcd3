"""One step of the authors' JAX trainer on fixed draws (../shared/parity), reproduced number for number."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from imf_core import FastIMFObjective, IMFObjective, StepDraws, build_model

# A copy of ../shared/parity/imf_jax_step_tiny.npz (see fixtures/imf_jax_step_tiny.README.md).
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "imf_jax_step_tiny.npz"


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


@pytest.fixture(scope="module")
def fixture():
    if not FIXTURE.exists():
        pytest.fail(f"parity fixture not found at {FIXTURE}")
    return np.load(FIXTURE, allow_pickle=False)


def build_from_fixture(data):
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


def test_torch_names_cover_the_fixture(fixture):
    net = build_from_fixture(fixture)
    grads = {torch_name(k[len("grad/"):]) for k in fixture.files if k.startswith("grad/")}
    assert grads == set(dict(net.named_parameters()))


@pytest.mark.parametrize("objective", [IMFObjective, FastIMFObjective])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_imf_step_matches_the_authors_jax_step(fixture, dtype, objective):
    d = fixture
    net = build_from_fixture(d).to(dtype)
    x = torch.from_numpy(d["x_nhwc"]).permute(0, 3, 1, 2).to(dtype)
    e = torch.from_numpy(d["e_nhwc"]).permute(0, 3, 1, 2).to(dtype)
    y = torch.from_numpy(d["y"]).long()
    B = x.shape[0]
    as_t = lambda k: torch.from_numpy(np.asarray(d[k], dtype=np.float32)).to(dtype)  # noqa: E731
    draws = StepDraws(t=as_t("t"), r=as_t("r"), noise=e, omega=as_t("omega"), t_min=as_t("t_min"),
                      t_max=as_t("t_max"), drop=torch.arange(B) < int(d["num_drop"]))
    assert torch.equal(draws.boundary, torch.from_numpy(d["fm"]))

    out = objective(num_classes=1000)(net, x, y, draws)
    out.loss.backward()

    assert out.mse_u.item() == pytest.approx(float(d["loss_u"]), rel=2e-6)
    assert out.mse_v.item() == pytest.approx(float(d["loss_v"]), rel=2e-6)
    assert out.loss.item() == pytest.approx(float(d["loss"]), rel=2e-6)
    params = dict(net.named_parameters())
    worst = 0.0
    for key in (k for k in d.files if k.startswith("grad/")):
        name = torch_name(key[len("grad/"):])
        ref = to_torch_layout(name, d[key]).to(dtype)
        got = params[name].grad
        assert got is not None, f"no gradient reached {name}"
        err = float((got - ref).norm() / ref.norm().clamp_min(1e-30))
        worst = max(worst, err)
        assert err < 3e-6, f"{name}: relative gradient error {err:.2e}"
    print(f"{objective.__name__} {dtype}: worst relative gradient error {worst:.2e}")
