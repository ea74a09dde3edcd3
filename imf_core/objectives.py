"""Training objectives: improved MeanFlow (iMF), original MeanFlow (MF), flow matching (FM).

Each takes any network with the conditioning interface
    net(x, t, h, omega, t_min, t_max, y) -> (u, v or None)
(optionally with `forward_u` / `forward_v` shortcuts), data of any shape, and the
step's draws (`imf_core.draws.StepDraws`). Path: z_t = (1 - t) x + t e, t = 1 is noise.
"""

from dataclasses import dataclass, replace

import torch

from .attention import forward_ad_attention
from .draws import StepDraws
from .finite_difference import DEFAULT_STEP, PRECISIONS, central_difference, tangent_precision


@dataclass
class LossOutput:
    loss: torch.Tensor  # what to call .backward() on: adaptive-weighted, summed terms, batch mean
    loss_u: torch.Tensor  # weighted u-term, batch mean (sits near 1)
    loss_v: torch.Tensor  # weighted v-term, batch mean (0 without a v-head)
    mse_u: torch.Tensor  # unweighted mean squared error of the u-term over all elements
    mse_v: torch.Tensor

    def metrics(self) -> dict:
        return {k: float(getattr(self, k).detach()) for k in ("loss", "loss_u", "loss_v", "mse_u", "mse_v")}


def per_row(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-row vector (B,) against a batch shaped like `like`."""
    return s.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def adaptive_weighted(sq_err: torch.Tensor, p: float, eps: float) -> torch.Tensor:
    """Per-row sum of squared errors divided by sg((sum + eps)^p)."""
    per_sample = sq_err.flatten(1).sum(1)
    return per_sample / (per_sample + eps).pow(p).detach()


def _call(net, branch, z, t, h, omega, t_min, t_max, y):
    shortcut = getattr(net, f"forward_{branch}", None)
    if shortcut is not None:
        return shortcut(z, t, h, omega, t_min, t_max, y)
    u, v = net(z, t, h, omega, t_min, t_max, y)
    return u if branch == "u" else v


def instantaneous_velocity(net, source, z, t, omega, y):
    """v_theta(z | y, omega) queried with h = 0 and interval [0, 1].

    source "aux": the v-branch; "boundary": the u-branch at r = t, u(z, t, t) = v(z, t).
    """
    zeros, ones = torch.zeros_like(t), torch.ones_like(t)
    branch = "v" if source == "aux" else "u"
    return _call(net, branch, z, t, zeros, omega, zeros, ones, y)


@torch.no_grad()
def guided_target(net, source, z, v_t, y, draws: StepDraws, num_classes):
    """v_g = (e - x) + (1 - 1/omega_eff) (v_c - v_u) with the online weights (docs/method.md,
    "Guidance as conditioning").

    Returns (v_g, v_c): v_c, queried at omega_eff, is the JVP tangent. Dropped rows get e - x, and their
    v_c is the null class's velocity, the condition their u is computed under.
    """
    t, omega = draws.t, draws.omega
    null = torch.full_like(y, num_classes)
    both = instantaneous_velocity(
        net, source, torch.cat([z, z]), torch.cat([t, t]),
        torch.cat([omega, torch.ones_like(omega)]), torch.cat([y, null]),
    )
    v_u = both.chunk(2)[1]
    in_interval = draws.boundary | ((t >= draws.t_min) & (t <= draws.t_max))
    omega_eff = torch.where(in_interval, omega, torch.ones_like(omega))
    v_c = instantaneous_velocity(net, source, z, t, omega_eff, _dropped_labels(y, draws, num_classes))
    v_g = v_t + per_row(1 - 1 / omega_eff, v_t) * (v_c - v_u)
    v_g = torch.where(per_row(draws.drop, v_t).bool(), v_t, v_g)
    return v_g, v_c


def _noisy(x, draws):
    t = per_row(draws.t, x)
    e = draws.noise.to(x.dtype)
    return (1 - t) * x + t * e, e - x


def _dropped_labels(y, draws, num_classes):
    return torch.where(draws.drop, torch.full_like(y, num_classes), y)


JVP_METHODS = ("forward_ad", "finite_difference")


def check_jvp(jvp, step, precision, methods=JVP_METHODS):
    """ValueError for a du/dt method, finite-difference step or tangent precision the objectives do not take."""
    if jvp not in methods:
        raise ValueError(f"jvp {jvp!r} is not one of {methods}")
    if not step > 0:
        raise ValueError(f"jvp_step {step} must be > 0")
    if precision not in PRECISIONS:
        raise ValueError(f"jvp_precision {precision!r} is not one of {PRECISIONS}")


def u_tangent_finite_difference(net, step, z, t, r, omega, t_min, t_max, y, dz):
    """du/dt of the u-branch along (dz, 1, 0) at (z, t, r), by a central difference of forward passes."""

    def u_fn(z, t, r, omega, t_min, t_max, y):
        return _call(net, "u", z, t, t - r, omega, t_min, t_max, y)

    fixed = (None,) * 5  # r and the conditions
    return central_difference(u_fn, (z, t, r, omega, t_min, t_max, y), (dz, torch.ones_like(t), *fixed), step)


def forward_with_tangent(net, with_v, z, t, r, conds, dz, jvp, step, precision):
    """(u, v or None, du/dt): the loss forward at (z, t, r | conds) with the graph, and du/dt along
    (dz, 1, 0) without it. conds: (omega, t_min, t_max, y).

    forward_ad differentiates the loss forward itself (explicit attention; `precision` is then that
    forward's too); finite_difference runs it as it is (fused attention) plus one pass on 2B rows.
    """

    def forward(z, t, r):
        if with_v:
            return net(z, t, t - r, *conds)
        return _call(net, "u", z, t, t - r, *conds), torch.zeros(())

    if jvp == "forward_ad":
        with forward_ad_attention(), tangent_precision(precision, z.device.type, finite_difference=False):
            u, du_dt, v = torch.func.jvp(forward, (z, t, r), (dz, torch.ones_like(t), torch.zeros_like(r)),
                                         has_aux=True)
    else:
        u, v = forward(z, t, r)
        with torch.no_grad(), tangent_precision(precision, z.device.type, finite_difference=True):
            du_dt = u_tangent_finite_difference(net, step, z, t, r, *conds, dz)
    return u, (v if with_v else None), du_dt.detach()


class IMFObjective:
    """L = w(||u + (t - r) sg(du/dt) - sg(v_g)||^2) + w(||v - sg(v_g)||^2) (docs/method.md, "The iMF objective").

    tangent "aux": v_theta from the auxiliary v-head (default, the released models);
    "boundary": v_theta = u_theta(z, t, t), no extra parameters and no v-term.
    jvp: how du/dt is taken, "forward_ad" (torch.func.jvp) or "finite_difference" (a central
    difference with step `jvp_step`); jvp_precision: "auto", "fp32", "autocast" or "bf16"
    (`imf_core.finite_difference.tangent_precision`).
    """

    def __init__(self, num_classes: int, tangent: str = "aux", norm_p: float = 1.0, norm_eps: float = 0.01,
                 jvp: str = "forward_ad", jvp_step: float = DEFAULT_STEP, jvp_precision: str = "auto"):
        if tangent not in ("aux", "boundary"):
            raise ValueError(f"tangent {tangent!r} is not 'aux' or 'boundary'")
        check_jvp(jvp, jvp_step, jvp_precision)
        self.num_classes, self.tangent, self.norm_p, self.norm_eps = num_classes, tangent, norm_p, norm_eps
        self.jvp, self.jvp_step, self.jvp_precision = jvp, jvp_step, jvp_precision

    def __call__(self, net, x, y, draws: StepDraws) -> LossOutput:
        z, v_t = _noisy(x, draws)
        v_g, v_c = guided_target(net, self.tangent, z, v_t, y, draws, self.num_classes)
        conds = (draws.omega, draws.t_min, draws.t_max, _dropped_labels(y, draws, self.num_classes))
        u, v, du_dt = forward_with_tangent(net, True, z, draws.t, draws.r, conds, v_c, self.jvp, self.jvp_step,
                                           self.jvp_precision)
        V = u + per_row(draws.t - draws.r, u) * du_dt
        return _weighted_terms(V, v if self.tangent == "aux" else None, v_g, self.norm_p, self.norm_eps)


class MeanFlowObjective:
    """Original MeanFlow: ||u - sg(v~ - (t - r) du/dt)||^2 with the tangent (v~, 0, 1).

    v~ = omega (e - x) + kappa v_c + (1 - omega - kappa) v_u inside [t_start, t_end], fixed
    scales baked in (MF B/2: omega 1.0, kappa 0.5); v_c, v_u = u(z, t, t | c or null). The network
    is conditioned on omega = 1 and interval [0, 1]; draws.omega/t_min/t_max are not used.
    jvp, jvp_step, jvp_precision: how du/dt is taken, as in `IMFObjective`.
    """

    def __init__(self, num_classes, omega=1.0, kappa=0.5, t_start=0.0, t_end=1.0, norm_p=1.0, norm_eps=0.01,
                 jvp="forward_ad", jvp_step=DEFAULT_STEP, jvp_precision="auto"):
        check_jvp(jvp, jvp_step, jvp_precision)
        self.num_classes, self.omega, self.kappa = num_classes, omega, kappa
        self.t_start, self.t_end, self.norm_p, self.norm_eps = t_start, t_end, norm_p, norm_eps
        self.jvp, self.jvp_step, self.jvp_precision = jvp, jvp_step, jvp_precision

    @torch.no_grad()
    def guided_velocity(self, net, z, v_t, y, t):
        if self.omega == 1.0 and self.kappa == 0.0:
            return v_t
        ones = torch.ones_like(t)
        null = torch.full_like(y, self.num_classes)
        both = instantaneous_velocity(net, "boundary", torch.cat([z, z]), torch.cat([t, t]),
                                      torch.cat([ones, ones]), torch.cat([y, null]))
        v_c, v_u = both.chunk(2)
        inside = (t >= self.t_start) & (t <= self.t_end)
        w = per_row(torch.where(inside, self.omega, 1.0), v_t)
        k = per_row(torch.where(inside, self.kappa, 0.0), v_t)
        return w * v_t + k * v_c + (1 - w - k) * v_u

    def __call__(self, net, x, y, draws: StepDraws) -> LossOutput:
        z, v_t = _noisy(x, draws)
        v_g = self.guided_velocity(net, z, v_t, y, draws.t)
        v_g = torch.where(per_row(draws.drop, v_t).bool(), v_t, v_g)
        ones, zeros = torch.ones_like(draws.t), torch.zeros_like(draws.t)
        conds = (ones, zeros, ones, _dropped_labels(y, draws, self.num_classes))
        u, _, du_dt = forward_with_tangent(net, False, z, draws.t, draws.r, conds, v_g, self.jvp, self.jvp_step,
                                           self.jvp_precision)
        target = (v_g - per_row((draws.t - draws.r).clamp(0, 1), u) * du_dt).detach()
        return _weighted_terms(u, None, target, self.norm_p, self.norm_eps)


class FlowMatchingObjective:
    """Flow matching with the same network at h = 0 (r = t on every row; draws.r is ignored).

    guided=False: target e - x, network conditioned on omega = 1 and interval [0, 1].
    guided=True: iMF's self-guided target and sampled guidance conditions; with r = t on
    every row this is exactly the iMF objective. A v-head, if present, gets the same term.
    """

    def __init__(self, num_classes, guided=False, tangent="aux", norm_p=1.0, norm_eps=0.01):
        self.num_classes, self.guided, self.tangent = num_classes, guided, tangent
        self.norm_p, self.norm_eps = norm_p, norm_eps

    def __call__(self, net, x, y, draws: StepDraws) -> LossOutput:
        t = draws.t
        if self.guided:
            draws = _as_boundary(draws)
        else:
            ones, zeros = torch.ones_like(t), torch.zeros_like(t)
            draws = _as_boundary(draws, omega=ones, t_min=zeros, t_max=ones)
        z, v_t = _noisy(x, draws)
        if self.guided:
            target, _ = guided_target(net, self.tangent, z, v_t, y, draws, self.num_classes)
        else:
            target = v_t
        y_in = _dropped_labels(y, draws, self.num_classes)
        u, v = net(z, t, torch.zeros_like(t), draws.omega, draws.t_min, draws.t_max, y_in)
        return _weighted_terms(u, v if self.tangent == "aux" else None, target, self.norm_p, self.norm_eps)


def _as_boundary(draws: StepDraws, **overrides) -> StepDraws:
    zeros, ones = torch.zeros_like(draws.t), torch.ones_like(draws.t)
    fields = dict(r=draws.t, t_min=zeros, t_max=ones)
    fields.update(overrides)
    return replace(draws, **fields)


def _weighted_terms(u_pred, v_pred, target, p, eps) -> LossOutput:
    target = target.detach()
    wide = torch.promote_types(u_pred.dtype, torch.float32)
    err_u = (u_pred.to(wide) - target.to(wide)).square()
    loss_u = adaptive_weighted(err_u, p, eps)
    if v_pred is None:
        zero = loss_u.new_zeros(())
        return LossOutput(loss_u.mean(), loss_u.mean(), zero, err_u.mean(), zero)
    err_v = (v_pred.to(wide) - target.to(wide)).square()
    loss_v = adaptive_weighted(err_v, p, eps)
    return LossOutput((loss_u + loss_v).mean(), loss_u.mean(), loss_v.mean(), err_u.mean(), err_v.mean())
