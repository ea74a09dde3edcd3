"""One step of the authors' JAX trainer on fixed draws (tests/core/jax_fixture.py), reproduced number for number."""

import pytest
import torch

from imf_core import FastIMFObjective, IMFObjective

from . import jax_fixture

# The finite-difference tangent (default step, fp32) against the JAX step's forward-mode AD: measured 1.0e-6 worst
# relative gradient error, 5.6e-7 on mse_v, 3.4e-7 on mse_u (the forward-mode path: under 1e-6); 5x margin.
FD_TOLERANCE = 5e-6


@pytest.fixture(scope="module")
def fixture():
    return jax_fixture.load()


def test_torch_names_cover_the_fixture(fixture):
    net = jax_fixture.build_network(fixture)
    assert set(jax_fixture.gradients(fixture)) == set(dict(net.named_parameters()))


def reproduce(data, objective, dtype, tolerance):
    """The objective's loss and gradients on the fixture's weights and draws against the JAX step's; the worst error."""
    net = jax_fixture.build_network(data).to(dtype)
    x, y, draws = jax_fixture.batch(data, dtype)
    assert torch.equal(draws.boundary, torch.from_numpy(data["fm"]))

    out = objective(net, x, y, draws)
    out.loss.backward()

    assert out.mse_u.item() == pytest.approx(float(data["loss_u"]), rel=tolerance)
    assert out.mse_v.item() == pytest.approx(float(data["loss_v"]), rel=tolerance)
    assert out.loss.item() == pytest.approx(float(data["loss"]), rel=tolerance)
    params = dict(net.named_parameters())
    worst = 0.0
    for name, ref in jax_fixture.gradients(data).items():
        got = params[name].grad
        assert got is not None, f"no gradient reached {name}"
        err = float((got - ref.to(dtype)).norm() / ref.norm().clamp_min(1e-30))
        worst = max(worst, err)
        assert err < tolerance, f"{name}: relative gradient error {err:.2e}"
    return worst


@pytest.mark.parametrize("objective", [IMFObjective, FastIMFObjective])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_imf_step_matches_the_authors_jax_step(fixture, dtype, objective):
    worst = reproduce(fixture, objective(num_classes=1000), dtype, tolerance=3e-6)
    print(f"{objective.__name__} {dtype}: worst relative gradient error {worst:.2e}")


@pytest.mark.parametrize("objective", [IMFObjective, FastIMFObjective])
def test_finite_difference_tangents_reproduce_the_jax_step(fixture, objective):
    worst = reproduce(fixture, objective(num_classes=1000, jvp="finite_difference"), torch.float32, FD_TOLERANCE)
    print(f"{objective.__name__} finite difference: worst relative gradient error {worst:.2e}")
