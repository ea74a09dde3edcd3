"""Rotary position embedding and multi-head attention with three execution paths.

PyTorch's fused scaled-dot-product kernels have no forward-mode AD rule, so a
`torch.func.jvp` through them fails. The caller picks the path through
`forward_ad_attention()`:
- outside it: the fused kernel (`F.scaled_dot_product_attention`);
- rule "explicit": softmax attention written out, differentiated by PyTorch's own
  rules (the reference; O(L^2) memory for the weights, kept in the graph);
- rule "sdpa": the fused kernel for the primal and a hand-written tangent
  (`SDPAWithJVP`), which recomputes the weights of one layer at a time. Eager only:
  torch.compile (2.13) cannot trace it inside torch.func.jvp and falls back to eager.
"""

import contextlib
import threading

import torch
import torch.nn.functional as F

RULES = ("explicit", "sdpa")


class _State(threading.local):
    rule = None  # a class default: the attribute always exists, so compiled code guards on its value only


_state = _State()


@contextlib.contextmanager
def forward_ad_attention(enabled: bool = True, rule: str = "explicit"):
    """Route attention through a path that supports `torch.func.jvp` (see the module docstring)."""
    if rule not in RULES:
        raise ValueError(f"attention rule {rule!r} is not one of {RULES}")
    previous = _state.rule
    _state.rule = rule if enabled else None
    try:
        yield
    finally:
        _state.rule = previous


def rope_tables(head_dim: int, seq_len: int, theta: float = 1e4):
    """cos/sin tables of shape (seq_len, head_dim // 2) for 1-D RoPE over positions."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), freqs)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of x (B, L, H, D) by position-dependent angles.

    Same numbers as a complex multiply on interleaved pairs, but in real
    arithmetic so that autograd and forward-mode AD reach the q/k projections.
    """
    dtype = x.dtype
    pairs = x.to(torch.promote_types(dtype, torch.float32)).unflatten(-1, (-1, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    rotated = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return rotated.flatten(-2).to(dtype)


def _weights(q, k):
    """softmax(q k^T / sqrt(d)) in fp32 (or wider), shape (B, H, L, L)."""
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    return torch.softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))


def explicit_attention(q, k, v):
    """softmax(q k^T / sqrt(d)) v on (B, H, L, D) tensors, with the softmax in fp32."""
    return _weights(q, k).to(v.dtype) @ v


def attention_with_tangent(q, k, v, dq, dk, dv):
    """O = P v, P = softmax(S), S = q k^T / sqrt(d), and its tangent along (dq, dk, dv).

    dS = (dq k^T + q dk^T) / sqrt(d);  dP = P * (dS - rowsum(P * dS));
    dO = dP v + P dv = (P * dS) v - rowsum(P * dS) O + P dv.
    """
    p = _weights(q, k)
    scale = q.shape[-1] ** -0.5
    # dq k^T + q dk^T as one matmul over the concatenated head channels; P v and P dv as another.
    ds = (torch.cat((dq, q), -1) * scale) @ torch.cat((k, dk), -1).transpose(-1, -2)
    out, p_dv = (p.to(v.dtype) @ torch.cat((v, dv), -1)).chunk(2, dim=-1)
    p_ds = p * ds
    row = p_ds.sum(-1, keepdim=True)
    dout = (p_ds.to(v.dtype) @ v).to(row.dtype) - row * out + p_dv
    return out, dout.to(out.dtype)


class SDPAWithJVP(torch.autograd.Function):
    """Fused attention whose forward-mode rule is `attention_with_tangent` (usable in torch.func.jvp)."""

    @staticmethod
    def forward(q, k, v):
        return F.scaled_dot_product_attention(q, k, v)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_forward(*inputs)
        ctx.save_for_backward(*inputs)

    @staticmethod
    def jvp(ctx, dq, dk, dv):
        q, k, v = ctx.saved_tensors
        zeros = lambda t, d: torch.zeros_like(t) if d is None else d  # noqa: E731
        return attention_with_tangent(q, k, v, zeros(q, dq), zeros(k, dk), zeros(v, dv))[1]

    @staticmethod
    def backward(ctx, grad_out):
        # Only for a primal used with grad: the fused kernel's own backward, after recomputing it.
        q, k, v = ctx.saved_tensors
        with torch.enable_grad():
            q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v)
        return torch.autograd.grad(out, (q, k, v), grad_out)


def attention(q, k, v):
    """Attention on (B, H, L, D) tensors through the path the current context asks for."""
    rule = _state.rule
    if rule == "explicit":
        return explicit_attention(q, k, v)
    if rule == "sdpa":
        return SDPAWithJVP.apply(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)
