"""The iMF step with the waste of docs/method.md, "Per-step cost", removed; same loss and gradients as `IMFObjective`.

Passes, in order:
1. the loss forward, with grad and fused attention: u (and v) on every row, conditioned as
   in the reference (sampled omega and interval, h = t - r, dropped labels);
2. one no-grad velocity query through the trunk and the tangent's branch only (v-branch, or
   u-branch for the boundary tangent), on just the rows that need it:
   - v_c at omega_eff on rows with t != r (the JVP tangent) and on rows whose target is
     guided, except r = t rows whose loss-pass output already is that query (h = 0,
     interval [0, 1], label kept, omega_eff = omega);
   - v_u (null class, omega 1) on rows whose target is guided (omega_eff != 1, label kept):
     elsewhere the target is e - x, exactly as the reference's (1 - 1/1) (v_c - v_u) = 0 gives;
3. du/dt through trunk + u-branch on the rows with t != r only (the (t - r) factor zeroes the
   others), without gradient: forward-mode AD written out layer by layer for an IMFDiT
   (`imf_core.tangent`), torch.func.jvp with an attention that has a forward-mode rule otherwise,
   or a central finite difference of two plain forward passes (`imf_core.finite_difference`).
No graph is kept for 2 and 3: du/dt, the tangent and the target are constants of the loss.
"""

import contextlib

import torch

from .attention import forward_ad_attention
from .draws import StepDraws
from .finite_difference import DEFAULT_STEP, tangent_precision
from .model import IMFDiT
from .objectives import _call, _dropped_labels, _noisy, _weighted_terms, check_jvp, per_row, u_tangent_finite_difference
from .tangent import u_with_tangent


def _pad_rows(multiple, dynamic, *tensors):
    """Pad every tensor's rows to a multiple by repeating its first row (fewer shapes to run).

    dynamic: tell torch.compile that the row count varies, so it compiles one graph for all.
    """
    n = tensors[0].shape[0]
    extra = -n % multiple
    if extra:
        tensors = tuple(torch.cat([t, t[:1].expand(extra, *t.shape[1:])]) for t in tensors)
    if dynamic:
        for t in tensors:
            torch._dynamo.maybe_mark_dynamic(t, 0)
    return tensors


def _loss_forward(net, need_v, z, t, h, omega, t_min, t_max, y):
    if need_v:
        return net(z, t, h, omega, t_min, t_max, y)
    return _call(net, "u", z, t, h, omega, t_min, t_max, y), None


def _velocity_query(net, branch, z, t, omega, y):
    zeros, ones = torch.zeros_like(t), torch.ones_like(t)
    return _call(net, branch, z, t, zeros, omega, zeros, ones, y)


def _u_tangent(net, z, t, r, omega, t_min, t_max, y, dz):
    """du/dt along (dz, 1, 0) at (z, t, r); primal discarded."""

    def u_fn(z, t, r):
        return _call(net, "u", z, t, t - r, omega, t_min, t_max, y)

    return torch.func.jvp(u_fn, (z, t, r), (dz, torch.ones_like(t), torch.zeros_like(r)))[1]


def _u_tangent_manual(net, z, t, r, omega, t_min, t_max, y, dz):
    """The same for an IMFDiT, which embeds only h = t - r: tangent dh = dt - dr = 1."""
    return u_with_tangent(net, z, dz, t - r, torch.ones_like(t), omega, t_min, t_max, y)[1]


class FastIMFObjective:
    """Drop-in for `IMFObjective` (same arguments, draws and `LossOutput`), cheaper per step.

    jvp: how du/dt is taken. Forward-mode AD: "manual" (layer by layer, IMFDiT only), "func"
    (torch.func.jvp) or "auto" (manual for an IMFDiT, func for any other network);
    "finite_difference": a central difference with step `jvp_step` through the network's own
    forward, fused attention included (`imf_core.finite_difference`).
    jvp_precision: the precision of the du/dt pass, "auto" (fp32 for a finite difference, the step's
    autocast for forward-mode AD), "fp32", "autocast" or "bf16" (`finite_difference.tangent_precision`).
    attention_rule, for jvp "func": how attention is differentiated, "sdpa" (fused primal with a
    hand-written tangent) or "explicit" (PyTorch's rules on written-out softmax attention);
    "auto" takes "sdpa" in eager mode and "explicit" when compiled, since Dynamo (torch 2.13)
    cannot trace an autograd.Function inside torch.func.jvp and would run that pass eagerly.
    compile: wrap each pass in `torch.compile(mode=compile_mode)`.
    row_multiple: pad the query and JVP passes to a multiple of this many rows, so that a
    compiled step sees few distinct shapes (their row counts change from step to step).
    For a DDP-wrapped net the loss forward goes through the wrapper (gradient sync) and the
    no-grad passes through `net.module`.
    """

    def __init__(self, num_classes: int, tangent: str = "aux", norm_p: float = 1.0, norm_eps: float = 0.01,
                 jvp: str = "auto", attention_rule: str = "auto", compile: bool = False,
                 compile_mode: str | None = None, row_multiple: int = 1, jvp_step: float = DEFAULT_STEP,
                 jvp_precision: str = "auto"):
        if tangent not in ("aux", "boundary"):
            raise ValueError(f"tangent {tangent!r} is not 'aux' or 'boundary'")
        check_jvp(jvp, jvp_step, jvp_precision, methods=("auto", "manual", "func", "finite_difference"))
        if attention_rule not in ("auto", "sdpa", "explicit"):
            raise ValueError(f"attention_rule {attention_rule!r} is not 'auto', 'sdpa' or 'explicit'")
        if attention_rule == "auto":
            attention_rule = "explicit" if compile else "sdpa"
        if row_multiple < 1:
            raise ValueError(f"row_multiple = {row_multiple} must be >= 1")
        self.num_classes, self.tangent, self.norm_p, self.norm_eps = num_classes, tangent, norm_p, norm_eps
        self.jvp, self.attention_rule, self.row_multiple = jvp, attention_rule, row_multiple
        self.jvp_step, self.jvp_precision = jvp_step, jvp_precision
        self.compiled = compile
        wrap = (lambda f: torch.compile(f, mode=compile_mode)) if compile else (lambda f: f)
        self._loss_forward = wrap(_loss_forward)
        self._velocity_query = wrap(_velocity_query)
        self._u_tangent = {"func": wrap(_u_tangent), "manual": wrap(_u_tangent_manual),
                           "finite_difference": wrap(u_tangent_finite_difference)}

    def __call__(self, net, x, y, draws: StepDraws):
        inner = getattr(net, "module", net)
        jvp = self.jvp
        if jvp == "auto":
            jvp = "manual" if isinstance(inner, IMFDiT) else "func"
        if jvp == "manual" and not isinstance(inner, IMFDiT):
            raise TypeError(f"jvp 'manual' needs an IMFDiT, got {type(inner).__name__}; use jvp='func'")
        t, r, omega, t_min, t_max = draws.t, draws.r, draws.omega, draws.t_min, draws.t_max
        # Row selection depends on the draws only: its host syncs come before any network work is queued.
        boundary = draws.boundary
        in_interval = boundary | ((t >= t_min) & (t <= t_max))
        omega_eff = torch.where(in_interval, omega, torch.ones_like(omega))
        guided = (omega_eff != 1) & ~draws.drop
        reuse = boundary & ~draws.drop & (t_min == 0) & (t_max == 1)
        cond_rows = (~boundary | (guided & ~reuse)).nonzero().squeeze(1)
        uncond_rows = guided.nonzero().squeeze(1)
        moving_rows = (~boundary).nonzero().squeeze(1)

        z, v_t = _noisy(x, draws)
        aux = self.tangent == "aux"
        y_in = _dropped_labels(y, draws, self.num_classes)
        u, v = self._loss_forward(net, aux, z, t, t - r, omega, t_min, t_max, y_in)
        if aux and v is None:
            raise RuntimeError("tangent 'aux' needs a network with the v-branch (v_head=True)")
        own = (v if aux else u).detach()

        v_c = own.clone()  # rows that keep this value are reuse rows or need no v_c at all
        v_g = v_t.clone()
        n_cond, n_uncond = cond_rows.numel(), uncond_rows.numel()
        if n_cond + n_uncond:
            rows = torch.cat([cond_rows, uncond_rows])
            query_omega = torch.cat([omega_eff[cond_rows], torch.ones_like(omega[uncond_rows])])
            # dropped rows' tangent: the null class's velocity, as their u is conditioned on it
            query_y = torch.cat([y_in[cond_rows], torch.full_like(y[uncond_rows], self.num_classes)])
            args = _pad_rows(self.row_multiple, self.compiled, z[rows], t[rows], query_omega, query_y)
            with torch.no_grad():
                answer = self._velocity_query(inner, "v" if aux else "u", *args)
            v_c[cond_rows] = answer[:n_cond].to(v_c.dtype)
            v_u = answer[n_cond:n_cond + n_uncond].to(v_c.dtype)
            w = omega_eff[uncond_rows]
            v_g[uncond_rows] = v_t[uncond_rows] + per_row(1 - 1 / w, v_t) * (v_c[uncond_rows] - v_u)

        du_dt = torch.zeros_like(own)
        if moving_rows.numel():
            m = moving_rows
            args = _pad_rows(self.row_multiple, self.compiled, z[m], t[m], r[m], omega[m], t_min[m], t_max[m],
                             y_in[m], v_c[m].to(z.dtype))
            fd = jvp == "finite_difference"
            if fd:
                args = (self.jvp_step, *args)
            ad_attention = contextlib.nullcontext() if fd else forward_ad_attention(rule=self.attention_rule)
            precision = tangent_precision(self.jvp_precision, z.device.type, finite_difference=fd)
            with torch.no_grad(), ad_attention, precision:
                tangent = self._u_tangent[jvp](inner, *args)
            du_dt = du_dt.to(torch.promote_types(du_dt.dtype, tangent.dtype))  # an fp32 tangent stays fp32
            du_dt[m] = tangent[: m.numel()].to(du_dt.dtype)

        V = u + per_row(t - r, u) * du_dt
        return _weighted_terms(V, v if aux else None, v_g, self.norm_p, self.norm_eps)
