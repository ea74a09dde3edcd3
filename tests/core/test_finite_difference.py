"""Finite-difference tangents: the analytic error of the difference, its accuracy at the default step against
forward-mode AD, fused attention kernels throughout the step, and fp32 passes under bf16 autocast."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from imf_core import DrawConfig, FastIMFObjective, IMFObjective, MeanFlowObjective, build_model, draw_step
from imf_core.finite_difference import DEFAULT_STEP, central_difference, tangent_precision
from imf_core.objectives import u_tangent_finite_difference
from imf_core.tangent import u_with_tangent
from tests.conftest import randomize
from tests.core.test_fast_step import micro
from tests.core.test_objectives import NUM_CLASSES, make_batch

# Measured at the default step on b2_shaped() and batch32(16) in fp32, against forward-mode AD: du/dt 9.8e-5,
# worst gradient tensor 9.9e-7, mse_u 1.1e-7. The bounds leave 5x or more for other CPUs' rounding.
DU_DT_BOUND, GRADIENT_BOUND, MSE_U_BOUND = 5e-4, 5e-6, 1e-6


def test_a_central_difference_of_a_cubic_is_off_by_exactly_s2_d3():
    """((x + s d)^3 - (x - s d)^3) / 2s = 3 x^2 d + s^2 d^3, the second term its truncation error."""
    g = torch.Generator().manual_seed(0)
    x, d, w = torch.randn(3, 5, 4, dtype=torch.float64, generator=g)
    calls = []

    def fn(x, w):
        calls.append(x.shape[0])
        return x.pow(3) * w

    for s in (1e-1, 1e-2):
        got = central_difference(fn, (x, w), (d, None), s)
        torch.testing.assert_close(got, (3 * x.square() * d + s**2 * d.pow(3)) * w, rtol=1e-9, atol=1e-12)
    assert calls == [10, 10]  # one call on both shifted copies
    with pytest.raises(ValueError, match="step 0 must be > 0"):
        central_difference(fn, (x, w), (d, None), 0)


def b2_shaped():
    """B/2's depth (12, 8 blocks per branch) and token count (276 on 32x32x4 latents), narrow."""
    torch.manual_seed(0)
    return randomize(build_model("B/2", hidden_size=64, num_heads=2, input_size=32, num_classes=NUM_CLASSES))


def batch32(n, seed=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, 32, 32, generator=g)
    return x, torch.randint(NUM_CLASSES, (n,), generator=g), draw_step(n, x.shape[1:], DrawConfig(), g)


def rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


def loss_and_gradients(objective, net, x, y, draws):
    """The step's LossOutput (detached) and the gradient of every parameter its loss reaches."""
    out = objective(net, x, y, draws)
    grads = torch.autograd.grad(out.loss, list(net.parameters()), allow_unused=True)
    return out, [g for g in grads if g is not None]


def test_the_default_step_is_as_accurate_as_measured():
    net, (x, y, draws) = b2_shaped(), batch32(16)
    m = ~draws.boundary
    dz = torch.randn(x[m].shape, generator=torch.Generator().manual_seed(3))
    conds = (draws.omega[m], draws.t_min[m], draws.t_max[m], y[m])
    with torch.no_grad():
        fd = u_tangent_finite_difference(net, DEFAULT_STEP, x[m], draws.t[m], draws.r[m], *conds, dz)
        _, ad = u_with_tangent(net, x[m], dz, (draws.t - draws.r)[m], torch.ones_like(draws.t[m]), *conds)
    ref, ref_grads = loss_and_gradients(FastIMFObjective(NUM_CLASSES, jvp="manual"), net, x, y, draws)
    got, got_grads = loss_and_gradients(FastIMFObjective(NUM_CLASSES, jvp="finite_difference"), net, x, y, draws)
    worst = max(rel(a, b) for a, b in zip(got_grads, ref_grads))
    print(f"du/dt {rel(fd, ad):.1e}, worst gradient {worst:.1e}, mse_u {rel(got.mse_u, ref.mse_u):.1e}")
    assert rel(fd, ad) < DU_DT_BOUND and worst < GRADIENT_BOUND and rel(got.mse_u, ref.mse_u) < MSE_U_BOUND
    assert ad.norm() > 0.1 * dz.norm()  # not a comparison of near-zeros


@pytest.mark.parametrize("objective", [IMFObjective, MeanFlowObjective])
def test_every_objective_takes_finite_difference_tangents(objective):
    net = micro(torch.float64)
    x, y, draws = make_batch(n=12, seed=4, class_dropout=0.3)
    ref, ref_grads = loss_and_gradients(objective(NUM_CLASSES), net, x, y, draws)
    got, got_grads = loss_and_gradients(objective(NUM_CLASSES, jvp="finite_difference", jvp_step=1e-5), net, x, y,
                                        draws)
    for name in ("loss", "mse_u", "mse_v"):
        torch.testing.assert_close(getattr(got, name), getattr(ref, name), rtol=1e-9, atol=0)
    assert len(got_grads) == len(ref_grads) and max(rel(a, b) for a, b in zip(got_grads, ref_grads)
                                                    if b.norm() > 0) < 1e-8


class AtenOps(TorchDispatchMode):
    """The ATen operators a block of code runs, forward and backward."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("objective", [IMFObjective, FastIMFObjective])
def test_a_finite_difference_step_runs_only_the_fused_attention_kernel(objective):
    net = micro(torch.float32)
    x, y, draws = make_batch(n=8, seed=5, dtype=torch.float32)
    with AtenOps() as fd:
        objective(NUM_CLASSES, jvp="finite_difference")(net, x, y, draws).loss.backward()
    with AtenOps() as ad:
        objective(NUM_CLASSES)(net, x, y, draws).loss.backward()
    fused = "_scaled_dot_product_flash_attention_for_cpu"
    assert fused in fd.seen and f"{fused}_backward" in fd.seen
    assert not {op for op in fd.seen if "softmax" in op}  # no attention written out, forward or backward
    assert "_softmax" in ad.seen  # forward-mode AD needs it


class OutputDtypes:
    """Dtype and row count of every output of a module while the gradient is off (the tangent passes)."""

    def __init__(self, module):
        self.seen = []
        module.register_forward_hook(lambda mod, args, out: None if torch.is_grad_enabled() else
                                     self.seen.append((out.dtype, out.shape[0])))


@pytest.mark.parametrize("jvp,precision,expected", [
    ("finite_difference", "auto", torch.float32), ("finite_difference", "autocast", torch.bfloat16),
    ("manual", "auto", torch.bfloat16), ("manual", "fp32", torch.float32),
])
def test_the_tangent_pass_runs_in_its_precision_under_bf16_autocast(jvp, precision, expected):
    net = micro(torch.float32)
    x, y, draws = make_batch(n=8, seed=6, dtype=torch.float32, ratio_r_neq_t=1.0)
    dtypes = OutputDtypes(net.u_final_layer.linear._flax_linear)  # the u-branch: only the loss forward and du/dt
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = FastIMFObjective(NUM_CLASSES, jvp=jvp, jvp_precision=precision)(net, x, y, draws)
    rows = 16 if jvp == "finite_difference" else 8  # (plus, minus) copies of the 8 rows with t != r, or the primal
    assert dtypes.seen == [(expected, rows)]
    assert torch.isfinite(out.loss)


def test_fp32_precision_under_autocast_gives_the_tangent_of_a_step_without_autocast():
    net = micro(torch.float32)
    x, y, d = make_batch(n=6, seed=7, dtype=torch.float32)
    dz = torch.randn_like(x)

    def tangent(precision):
        with torch.no_grad(), tangent_precision(precision, "cpu", finite_difference=True):
            return u_tangent_finite_difference(net, DEFAULT_STEP, x, d.t, d.r, d.omega, d.t_min, d.t_max, y, dz)

    plain = tangent("fp32")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(tangent("fp32"), plain) and tangent("auto").dtype == torch.float32
        assert tangent("autocast").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision 'fp16' is not one of"):
        tangent_precision("fp16", "cpu", finite_difference=True)


def test_invalid_tangent_options_are_refused():
    with pytest.raises(ValueError, match="jvp 'finite_differences' is not one of"):
        IMFObjective(NUM_CLASSES, jvp="finite_differences")
    with pytest.raises(ValueError, match="jvp_step -0.1 must be > 0"):
        FastIMFObjective(NUM_CLASSES, jvp="finite_difference", jvp_step=-0.1)
    with pytest.raises(ValueError, match="jvp_precision 'fp64' is not one of"):
        MeanFlowObjective(NUM_CLASSES, jvp_precision="fp64")
