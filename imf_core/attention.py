"""Rotary position embedding and multi-head attention with two execution paths.

PyTorch's fused scaled-dot-product kernels have no forward-mode AD rule, so a
`torch.func.jvp` through them fails. Passes that need forward-mode AD run the
explicit softmax path instead; every other pass uses the fused kernel. The
choice is made by the caller through `forward_ad_attention()`.
"""

import contextlib
import threading

import torch
import torch.nn.functional as F

_state = threading.local()


@contextlib.contextmanager
def forward_ad_attention(enabled: bool = True):
    """Route attention through the path that supports `torch.func.jvp`."""
    previous = getattr(_state, "forward_ad", False)
    _state.forward_ad = enabled
    try:
        yield
    finally:
        _state.forward_ad = previous


def uses_forward_ad_path() -> bool:
    return getattr(_state, "forward_ad", False)


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


def explicit_attention(q, k, v):
    """softmax(q k^T / sqrt(d)) v on (B, H, L, D) tensors, with the softmax in fp32."""
    scale = q.shape[-1] ** -0.5
    logits = (q * scale) @ k.transpose(-1, -2)
    weights = torch.softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))
    return weights.to(v.dtype) @ v


def attention(q, k, v):
    """Attention on (B, H, L, D) tensors through the path the current context asks for."""
    if uses_forward_ad_path():
        return explicit_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)
