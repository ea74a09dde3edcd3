"""The fast iMF step computes the reference step's loss and gradients, with less work."""

from dataclasses import replace

import pytest
import torch

from imf_core import FastIMFObjective, IMFObjective, build_model
from imf_core.attention import SDPAWithJVP, explicit_attention, forward_ad_attention
from imf_core.tangent import u_with_tangent
from tests.conftest import randomize
from tests.core.test_objectives import NUM_CLASSES, Recorder, make_batch

FIELDS = ("loss", "loss_u", "loss_v", "mse_u", "mse_v")


def micro(dtype, **overrides):
    torch.manual_seed(0)
    return randomize(build_model("Micro/2", input_size=8, num_classes=NUM_CLASSES, **overrides)).to(dtype)


def compare(net, x, y, draws, rtol, tangent="aux", **fast_options):
    """Reference and fast step on the same draws: every LossOutput field and every parameter gradient."""
    params = list(net.parameters())
    ref = IMFObjective(NUM_CLASSES, tangent=tangent)(net, x, y, draws)
    ref_grads = torch.autograd.grad(ref.loss, params, allow_unused=True)
    fast = FastIMFObjective(NUM_CLASSES, tangent=tangent, **fast_options)(net, x, y, draws)
    fast_grads = torch.autograd.grad(fast.loss, params, allow_unused=True)
    for k in FIELDS:
        torch.testing.assert_close(getattr(fast, k), getattr(ref, k), rtol=rtol, atol=0, msg=k)
    worst = 0.0
    for (name, _), a, b in zip(net.named_parameters(), ref_grads, fast_grads):
        assert (a is None) == (b is None), f"{name}: gradient reached one step only"
        if a is not None:
            worst = max(worst, float((a - b).norm() / a.norm()))
            assert worst < rtol, f"{name}: relative gradient error {worst:.2e}"
    assert ref.mse_u > 1e-3 and (ref.mse_v > 1e-3 or tangent == "boundary")  # not a comparison of zeros
    return worst


PATHS = {"manual": dict(jvp="manual"), "func-sdpa": dict(jvp="func", attention_rule="sdpa"),
         "func-explicit": dict(jvp="func", attention_rule="explicit")}


@pytest.mark.parametrize("tangent", ["aux", "boundary"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("layout", ["positional", "random"])
def test_fast_step_equals_reference_in_fp32(tangent, path, layout):
    cfg = {} if layout == "positional" else dict(row_selection="random", dropout_rows="random", class_dropout=0.3)
    x, y, draws = make_batch(n=16, seed=3, dtype=torch.float32, **cfg)
    compare(micro(torch.float32), x, y, draws, rtol=1e-5, tangent=tangent, **PATHS[path])


def test_fast_step_equals_reference_in_fp64_with_padded_passes():
    x, y, draws = make_batch(n=16, seed=4, row_selection="random", dropout_rows="random", class_dropout=0.3)
    assert compare(micro(torch.float64), x, y, draws, rtol=1e-10, row_multiple=5) < 1e-10


def test_unusual_draws_take_the_general_path():
    """r = t rows with a narrow interval (no reuse), omega = 1 rows, dropped t != r rows."""
    x, y, d = make_batch(n=12, seed=5, class_dropout=0.0)
    t = torch.rand(12, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.8 + 0.1
    r = torch.where(torch.arange(12) % 3 == 0, t, t * 0.5)
    t_min = torch.where(torch.arange(12) % 2 == 0, 0.2, 0.0).double()
    t_max = torch.where(torch.arange(12) % 4 == 0, 0.7, 1.0).double()
    omega = torch.where(torch.arange(12) % 5 == 0, 1.0, 3.0).double()
    drop = torch.arange(12) % 7 == 1
    d = replace(d, t=t, r=r, t_min=t_min, t_max=t_max, omega=omega, drop=drop)
    for tangent in ("aux", "boundary"):
        compare(micro(torch.float64), x, y, d, rtol=1e-10, tangent=tangent)


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_batches_without_boundary_rows_or_without_jvp_rows(ratio):
    x, y, draws = make_batch(n=8, seed=6, ratio_r_neq_t=ratio, class_dropout=0.3)
    compare(micro(torch.float64), x, y, draws, rtol=1e-10)


def test_generic_network_without_branch_shortcuts():
    net = Recorder()
    x, y, draws = make_batch(n=8, seed=7, class_dropout=0.3)
    ref = IMFObjective(NUM_CLASSES)(net, x, y, draws)
    fast = FastIMFObjective(NUM_CLASSES)(net, x, y, draws)
    torch.testing.assert_close(fast.loss, ref.loss, rtol=1e-12, atol=0)
    a = torch.autograd.grad(ref.loss, list(net.parameters()))
    b = torch.autograd.grad(fast.loss, list(net.parameters()))
    torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def record_rows(net):
    """(part, rows, grad enabled) for every call of the first q-projection of trunk, u- and v-branch."""
    calls = []
    for part, blocks in (("trunk", net.shared_blocks), ("u", net.u_heads), ("v", net.v_heads)):
        blocks[0].attn.q_proj.register_forward_pre_hook(
            lambda mod, args, part=part: calls.append((part, args[0].shape[0], torch.is_grad_enabled())))
    return calls


@pytest.mark.parametrize("jvp", ["manual", "func"])
def test_each_pass_runs_only_the_rows_and_branches_it_needs(jvp):
    net = micro(torch.float64)
    x, y, d = make_batch(n=16, seed=8, class_dropout=0.0)
    d = replace(d, drop=torch.arange(16) < 3)  # positional: dropped rows lead, inside the r = t half
    calls = record_rows(net)
    FastIMFObjective(NUM_CLASSES, jvp=jvp)(net, x, y, d)
    moving = int((~d.boundary).sum())
    inside = (d.t >= d.t_min) & (d.t <= d.t_max)
    guided = int(((d.boundary | inside) & ~d.drop).sum())
    assert moving == 8 and 8 - 3 < guided < 16
    jvp_rows = 2 * moving if jvp == "manual" else moving  # the manual pass stacks primal and tangent rows
    assert calls == [
        ("trunk", 16, True), ("u", 16, True), ("v", 16, True),  # the loss forward
        ("trunk", moving + guided, False), ("v", moving + guided, False),  # one velocity query
        ("trunk", jvp_rows, False), ("u", jvp_rows, False),  # the JVP: t != r rows only, no v-branch
    ]


def test_manual_tangent_equals_torch_func_jvp():
    net = micro(torch.float64)
    g = torch.Generator().manual_seed(1)
    x, dx = torch.randn(2, 5, 4, 8, 8, dtype=torch.float64, generator=g)
    h, dh, t_min = torch.rand(3, 5, dtype=torch.float64, generator=g) * 0.5
    omega, y = 1 + 3 * h, torch.tensor([0, 3, 10, 2, 1])

    def u(x, h):
        return net.forward_u(x, h, h, omega, t_min, t_min + 0.5, y)

    with forward_ad_attention():
        ref_u, ref_du = torch.func.jvp(u, (x, h), (dx, dh))
    with torch.no_grad():
        got_u, got_du = u_with_tangent(net, x, dx, h, dh, omega, t_min, t_min + 0.5, y)
    torch.testing.assert_close(got_u, ref_u, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got_du, ref_du, rtol=1e-12, atol=1e-14)
    assert ref_du.abs().mean() > 1e-2


def test_sdpa_attention_tangent_and_gradient():
    g = torch.Generator().manual_seed(0)
    q, k, v, dq, dk, dv = torch.randn(6, 2, 3, 9, 8, dtype=torch.float64, generator=g).unbind(0)
    out, tangent = torch.func.jvp(SDPAWithJVP.apply, (q, k, v), (dq, dk, dv))
    ref_out, ref_tangent = torch.func.jvp(explicit_attention, (q, k, v), (dq, dk, dv))
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(tangent, ref_tangent, rtol=1e-12, atol=1e-12)
    eps = 1e-6
    fd = (explicit_attention(q + eps * dq, k + eps * dk, v + eps * dv)
          - explicit_attention(q - eps * dq, k - eps * dk, v - eps * dv)) / (2 * eps)
    torch.testing.assert_close(tangent, fd, rtol=1e-7, atol=1e-9)
    assert tangent.abs().mean() > 0.1
    inputs = tuple(t.clone().requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(SDPAWithJVP.apply, inputs)


def test_jvp_under_no_grad_keeps_the_tangent_and_no_graph():
    net = micro(torch.float64)
    x, y, d = make_batch(n=4, seed=9)

    def u(z, h):
        return net.forward_u(z, d.t, h, d.omega, d.t_min, d.t_max, y)

    tangents = (torch.randn_like(x), torch.ones_like(d.t))
    with forward_ad_attention():
        _, with_graph = torch.func.jvp(u, (x, d.t - d.r), tangents)
    with torch.no_grad(), forward_ad_attention(rule="sdpa"):
        _, without = torch.func.jvp(u, (x, d.t - d.r), tangents)
    assert with_graph.requires_grad and not without.requires_grad
    torch.testing.assert_close(without, with_graph.detach(), rtol=1e-10, atol=1e-12)


class Wrapped(torch.nn.Module):
    """Stands in for DDP: a `.module` attribute and a forward that must carry the gradient."""

    def __init__(self, module):
        super().__init__()
        self.module, self.calls = module, 0

    def forward(self, *args):
        self.calls += 1
        return self.module(*args)


def test_wrapped_network_carries_only_the_loss_forward():
    net = micro(torch.float64)
    wrapped = Wrapped(net)
    x, y, draws = make_batch(n=8, seed=10)
    out = FastIMFObjective(NUM_CLASSES)(wrapped, x, y, draws)
    assert wrapped.calls == 1
    ref = IMFObjective(NUM_CLASSES)(net, x, y, draws)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-10, atol=0)


def test_invalid_options_are_refused():
    with pytest.raises(ValueError, match="attention_rule .flash."):
        FastIMFObjective(NUM_CLASSES, attention_rule="flash")
    with pytest.raises(ValueError, match="tangent 'both'"):
        FastIMFObjective(NUM_CLASSES, tangent="both")
    with pytest.raises(ValueError, match="jvp 'forward'"):
        FastIMFObjective(NUM_CLASSES, jvp="forward")
    x, y, draws = make_batch(n=4)
    with pytest.raises(TypeError, match="jvp 'manual' needs an IMFDiT"):
        FastIMFObjective(NUM_CLASSES, jvp="manual")(Recorder(), x, y, draws)
    with pytest.raises(ValueError, match="attention rule 'flash'"):
        with forward_ad_attention(rule="flash"):
            pass
    net = micro(torch.float64, v_head=False)
    with pytest.raises(RuntimeError, match="v-branch"):
        FastIMFObjective(NUM_CLASSES)(net, x, y, draws)
