import math

import pytest
import torch
from scipy import stats

from imf_core import DrawConfig, FlowMatchingObjective, IMFObjective, MeanFlowObjective, StepDraws, draw_step
from imf_core.draws import sample_omega, sample_times
from imf_core.objectives import adaptive_weighted, guided_target, instantaneous_velocity, per_row

NUM_CLASSES = 10


def make_batch(n=6, seed=1, dtype=torch.float64, **cfg):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, 8, 8, generator=g, dtype=dtype)
    y = torch.randint(NUM_CLASSES, (n,), generator=g)
    draws = draw_step(n, x.shape[1:], DrawConfig(**cfg), g).to(dtype=dtype)
    return x, y, draws


def test_jvp_equals_central_finite_difference(micro_net):
    x, y, d = make_batch()
    z = (1 - per_row(d.t, x)) * x + per_row(d.t, x) * d.noise
    v_g, v_c = guided_target(micro_net, "aux", z, d.noise - x, y, d, NUM_CLASSES)

    def u(z, t, r):
        return micro_net(z, t, t - r, d.omega, d.t_min, d.t_max, y)[0]

    from imf_core import forward_ad_attention

    with forward_ad_attention():
        _, du_dt = torch.func.jvp(u, (z, d.t, d.r), (v_c, torch.ones_like(d.t), torch.zeros_like(d.r)))
    eps = 1e-5
    with torch.no_grad():
        fd = (u(z + eps * v_c, d.t + eps, d.r) - u(z - eps * v_c, d.t - eps, d.r)) / (2 * eps)
    torch.testing.assert_close(du_dt, fd, rtol=1e-6, atol=1e-8)
    assert du_dt.abs().mean() > 1e-4


def test_gradients_flow_only_through_u_and_v(micro_net):
    """The objective's gradient equals that of a hand-built loss whose du/dt, tangent and target are constants."""
    x, y, d = make_batch()
    out = IMFObjective(NUM_CLASSES)(micro_net, x, y, d)
    auto = torch.autograd.grad(out.loss, list(micro_net.parameters()))

    # Hand-built: the same pieces computed separately, then frozen.
    z = (1 - per_row(d.t, x)) * x + per_row(d.t, x) * d.noise
    v_g, v_c = guided_target(micro_net, "aux", z, d.noise - x, y, d, NUM_CLASSES)
    y_in = torch.where(d.drop, NUM_CLASSES, y)
    eps = 1e-6
    with torch.no_grad():
        plus = micro_net(z + eps * v_c, d.t + eps, d.t + eps - d.r, d.omega, d.t_min, d.t_max, y_in)[0]
        minus = micro_net(z - eps * v_c, d.t - eps, d.t - eps - d.r, d.omega, d.t_min, d.t_max, y_in)[0]
        du_dt = (plus - minus) / (2 * eps)
    u, v = micro_net(z, d.t, d.t - d.r, d.omega, d.t_min, d.t_max, y_in)
    V = u + per_row(d.t - d.r, u) * du_dt
    lu = ((V - v_g) ** 2).flatten(1).sum(1)
    lv = ((v - v_g) ** 2).flatten(1).sum(1)
    hand = (lu / (lu.detach() + 0.01) + lv / (lv.detach() + 0.01)).mean()
    manual = torch.autograd.grad(hand, list(micro_net.parameters()))
    assert hand.item() == pytest.approx(out.loss.item(), rel=1e-8)
    for a, b in zip(auto, manual):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


class Recorder(torch.nn.Module):
    """u = a * z (grads reach a), v = b * z + omega-dependent shift; records every call's conditions."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.7, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.tensor(-0.3, dtype=torch.float64))
        self.calls = []

    def forward(self, z, t, h, omega, t_min, t_max, y):
        self.calls.append(dict(h=h.detach(), omega=omega.detach(), t_min=t_min.detach(), t_max=t_max.detach(), y=y))
        shift = per_row(y.to(z.dtype) + 1 - 1 / omega, z)
        return self.a * z, self.b * z + shift


def test_guided_target_algebra():
    net = Recorder()
    x, y, d = make_batch(n=8, class_dropout=0.0)
    z = (1 - per_row(d.t, x)) * x + per_row(d.t, x) * d.noise
    v_t = d.noise - x

    # omega = 1 everywhere: v_g = e - x exactly.
    ones = torch.ones_like(d.omega)
    from dataclasses import replace

    v_g, _ = guided_target(net, "aux", z, v_t, y, replace(d, omega=ones), NUM_CLASSES)
    torch.testing.assert_close(v_g, v_t, rtol=0, atol=0)

    # Rows outside their interval get omega_eff = 1; r = t rows keep omega whatever t is.
    t = torch.tensor([0.3, 0.3, 0.6, 0.9, 0.2, 0.8, 0.5, 0.45], dtype=torch.float64)
    r = torch.tensor([0.3, 0.1, 0.2, 0.5, 0.2, 0.1, 0.1, 0.1], dtype=torch.float64)
    t_min = torch.tensor([0.0, 0.4, 0.4, 0.4, 0.0, 0.1, 0.2, 0.45], dtype=torch.float64)
    t_max = torch.tensor([1.0, 0.6, 0.7, 0.7, 1.0, 0.9, 0.5, 0.6], dtype=torch.float64)
    omega = torch.full((8,), 4.0, dtype=torch.float64)
    d2 = replace(d, t=t, r=r, t_min=t_min, t_max=t_max, omega=omega)
    net.calls.clear()
    v_g, v_c = guided_target(net, "aux", z, v_t, y, d2, NUM_CLASSES)
    first, second = net.calls
    assert torch.equal(first["omega"], torch.cat([omega, torch.ones(8, dtype=torch.float64)]))
    assert torch.equal(first["y"][8:], torch.full((8,), NUM_CLASSES))
    for call in (first, second):  # v queries: h = 0 and interval [0, 1]
        assert torch.count_nonzero(call["h"]) == 0 and torch.all(call["t_min"] == 0) and torch.all(call["t_max"] == 1)
    inside = torch.tensor([True, False, True, False, True, True, True, True])
    assert torch.equal(second["omega"], torch.where(inside, 4.0, 1.0).double())
    # v_c - v_u = (y + 1 - 1/omega_eff) - (num_classes + 0) per element for this network.
    omega_eff = torch.where(inside, 4.0, 1.0).double()
    expected = v_t + per_row((1 - 1 / omega_eff) * (y + 1 - 1 / omega_eff - NUM_CLASSES), v_t)
    torch.testing.assert_close(v_g, expected)
    torch.testing.assert_close(v_c, net.b * z + per_row(y + 1 - 1 / omega_eff, z))


def test_dropped_rows_get_e_minus_x_and_the_null_label():
    net = Recorder()
    x, y, d = make_batch(n=8)
    from dataclasses import replace

    d = replace(d, drop=torch.arange(8) < 3, omega=torch.full((8,), 3.0, dtype=torch.float64))
    z = (1 - per_row(d.t, x)) * x + per_row(d.t, x) * d.noise
    v_g, _ = guided_target(net, "aux", z, d.noise - x, y, d, NUM_CLASSES)
    torch.testing.assert_close(v_g[:3], (d.noise - x)[:3], rtol=0, atol=0)
    assert not torch.allclose(v_g[3:], (d.noise - x)[3:])
    net.calls.clear()
    IMFObjective(NUM_CLASSES)(net, x, y, d)
    loss_call = net.calls[-1]
    assert torch.equal(loss_call["y"][:3], torch.full((3,), NUM_CLASSES)) and torch.equal(loss_call["y"][3:], y[3:])
    torch.testing.assert_close(loss_call["h"], d.t - d.r)
    torch.testing.assert_close(loss_call["omega"], d.omega)


def test_boundary_rows_get_the_full_interval_and_positional_layout():
    cfg = DrawConfig(ratio_r_neq_t=0.5, class_dropout=0.3)
    d = draw_step(1000, (2,), cfg, torch.Generator().manual_seed(0))
    assert torch.equal(d.boundary, torch.arange(1000) < 500)
    assert torch.all(d.t_min[:500] == 0) and torch.all(d.t_max[:500] == 1)
    assert torch.all((d.t_min[500:] >= 0) & (d.t_min[500:] <= 0.5))
    assert torch.all((d.t_max[500:] >= 0.5) & (d.t_max[500:] <= 1))
    assert torch.all(d.r[500:] < d.t[500:])
    k = int(d.drop.sum())
    assert 250 < k < 350 and torch.equal(d.drop, torch.arange(1000) < k)
    random_rows = draw_step(1000, (2,), DrawConfig(row_selection="random", dropout_rows="random"),
                            torch.Generator().manual_seed(0))
    assert int(random_rows.boundary.sum()) == 500 and not torch.equal(random_rows.boundary, torch.arange(1000) < 500)
    assert not torch.equal(random_rows.drop, torch.arange(1000) < int(random_rows.drop.sum()))


@pytest.mark.parametrize("beta", [1.0, 0.5, 2.0])
def test_omega_follows_its_power_law(beta):
    omega_max = 8.0
    w = sample_omega(20000, omega_max, beta, torch.Generator().manual_seed(3)).double().numpy()
    assert w.min() >= 1.0 and w.max() <= omega_max
    if beta == 1.0:
        cdf = lambda s: (torch.tensor(s).log() / math.log(omega_max)).numpy()  # noqa: E731
    else:
        a = 1 - beta
        cdf = lambda s: (s**a - 1) / (omega_max**a - 1)  # noqa: E731
    assert stats.kstest(w, cdf).pvalue > 0.01


def test_logit_normal_times_match_their_parameters():
    t = sample_times(50000, "logit_normal", -0.4, 1.0, torch.Generator().manual_seed(5)).double()
    logit = torch.log(t / (1 - t))
    assert logit.mean().item() == pytest.approx(-0.4, abs=0.02)
    assert logit.std().item() == pytest.approx(1.0, abs=0.02)
    u = sample_times(50000, "uniform", 0, 1, torch.Generator().manual_seed(5)).double().numpy()
    assert stats.kstest(u, "uniform").pvalue > 0.01


def test_all_boundary_rows_make_imf_equal_guided_flow_matching(micro_net):
    x, y, d = make_batch(ratio_r_neq_t=0.0, class_dropout=0.3)
    assert torch.all(d.boundary)
    imf = IMFObjective(NUM_CLASSES)(micro_net, x, y, d)
    fm = FlowMatchingObjective(NUM_CLASSES, guided=True)(micro_net, x, y, d)
    for k in ("loss", "loss_u", "loss_v", "mse_u", "mse_v"):
        torch.testing.assert_close(getattr(imf, k), getattr(fm, k), rtol=1e-12, atol=0)


def test_same_seed_same_loss_bit_for_bit():
    from imf_core import build_model
    from tests.conftest import randomize

    losses = []
    for _ in range(2):
        torch.manual_seed(0)
        net = randomize(build_model("Micro/2", input_size=8, num_classes=NUM_CLASSES))
        x, y, d = make_batch(dtype=torch.float32, seed=11)
        losses.append(IMFObjective(NUM_CLASSES)(net, x, y, d).loss)
    assert losses[0].item() == losses[1].item()
    x, y, d = make_batch(dtype=torch.float32, seed=12)
    assert IMFObjective(NUM_CLASSES)(net, x, y, d).loss.item() != losses[0].item()


def test_adaptive_weight_is_near_one_and_carries_the_plain_gradient_direction():
    err = torch.tensor([[4.0, 5.0], [0.0, 0.01]], requires_grad=True)
    w = adaptive_weighted(err, 1.0, 0.01)
    torch.testing.assert_close(w.detach(), torch.tensor([9 / 9.01, 0.01 / 0.02]))
    w.sum().backward()
    torch.testing.assert_close(err.grad, torch.tensor([[1 / 9.01] * 2, [1 / 0.02] * 2]))


def test_boundary_tangent_uses_the_u_branch_and_has_no_v_term(micro_net):
    x, y, d = make_batch()
    out = IMFObjective(NUM_CLASSES, tangent="boundary")(micro_net, x, y, d)
    assert out.loss_v.item() == 0 and out.loss.item() == out.loss_u.item()
    z = (1 - per_row(d.t, x)) * x + per_row(d.t, x) * d.noise
    v = instantaneous_velocity(micro_net, "boundary", z, d.t, d.omega, y)
    zeros = torch.zeros_like(d.t)
    torch.testing.assert_close(v, micro_net(z, d.t, zeros, d.omega, zeros, torch.ones_like(d.t), y)[0])


def test_mean_flow_target_and_tangent(micro_net):
    """MF with omega = 1, kappa = 0: tangent e - x and target e - x - (t - r) du/dt along it."""
    x, y, d = make_batch(class_dropout=0.0)
    out = MeanFlowObjective(NUM_CLASSES, omega=1.0, kappa=0.0)(micro_net, x, y, d)
    z = (1 - per_row(d.t, x)) * x + per_row(d.t, x) * d.noise
    v = d.noise - x
    ones, zeros = torch.ones_like(d.t), torch.zeros_like(d.t)
    u_of = lambda z, t, r: micro_net(z, t, t - r, ones, zeros, ones, y)[0]  # noqa: E731
    eps = 1e-6
    with torch.no_grad():
        du = (u_of(z + eps * v, d.t + eps, d.r) - u_of(z - eps * v, d.t - eps, d.r)) / (2 * eps)
        u = u_of(z, d.t, d.r)
    target = v - per_row(d.t - d.r, v) * du
    torch.testing.assert_close(out.mse_u, ((u - target) ** 2).mean(), rtol=1e-7, atol=0)


def test_invalid_draw_settings_are_refused():
    with pytest.raises(ValueError, match="omega_max = 0.5"):
        DrawConfig(omega_max=0.5)
    with pytest.raises(ValueError, match="t_min_range"):
        DrawConfig(t_min_range=(0.6, 0.2))


def test_draws_move_between_dtypes():
    d = draw_step(4, (3,), DrawConfig(), torch.Generator().manual_seed(0))
    assert isinstance(d, StepDraws) and d.to(dtype=torch.float64).t.dtype == torch.float64
    assert d.to(dtype=torch.float64).drop.dtype == torch.bool


@pytest.mark.parametrize("kind", ["reference", "fast"])
def test_a_dropped_row_does_not_depend_on_the_label_it_dropped(micro_net, kind):
    """A dropped row is conditioned on the null class and its target is e - x: its JVP tangent must be the null
    class's velocity too, so the row's loss cannot depend on the original label (random dropout puts dropped rows
    where r != t, which the positional layout never does)."""
    from imf_core import FastIMFObjective, IMFObjective

    x, y, d = make_batch(n=12, seed=5, row_selection="random", dropout_rows="random", class_dropout=0.5)
    dropped_moving = d.drop & ~d.boundary
    assert dropped_moving.any()
    relabelled = torch.where(d.drop, (y + 3) % NUM_CLASSES, y)
    assert not torch.equal(relabelled, y)
    objective = (IMFObjective if kind == "reference" else FastIMFObjective)(NUM_CLASSES)
    a, b = objective(micro_net, x, y, d), objective(micro_net, x, relabelled, d)
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(a.mse_u, b.mse_u, rtol=1e-12, atol=0)
