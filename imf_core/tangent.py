"""Forward-mode AD through IMFDiT's u-path, written out layer by layer: (u, du) along (dx, dh).

`torch.func.jvp` wraps every op (several times the cost of a plain forward on small
tensors, and many more kernel launches), and torch.compile (2.13) cannot trace an
attention with a custom forward-mode rule inside it. Here each block maps (primal,
tangent) to (primal, tangent) with ordinary ops: the bias-free linears run once on the
primal and tangent rows stacked, and attention computes its softmax weights once for
both. Only the embedding (a few small ops) goes through torch.func.jvp.
tests/core/test_fast_step.py checks it against torch.func.jvp on the whole network.
"""

import torch
import torch.nn.functional as F

from .attention import apply_rope, attention_with_tangent


def _rms_norm(norm, x, dx):
    """y = x r w with r = (mean(x^2) + eps)^-1/2;  dy = (dx r - x r^3 mean(x dx)) w."""
    r = torch.rsqrt(x.square().mean(-1, keepdim=True) + norm.eps)
    y = x * r * norm.weight
    dy = (dx * r - x * r.pow(3) * (x * dx).mean(-1, keepdim=True)) * norm.weight
    return y, dy


def _stacked(linear, x, dx):
    """A bias-free linear map on primal and tangent as one matmul."""
    return linear(torch.cat([x, dx])).chunk(2)


def _silu_with_tangent(a, da):
    s = torch.sigmoid(a)
    return a * s, s * (1 + a * (1 - s)) * da


def _block(block, x, dx, rope):
    attn, B, L, D = block.attn, *x.shape
    heads = (2 * B, L, attn.num_heads, attn.head_dim)
    h = torch.cat(_rms_norm(block.norm1, x, dx))
    q, dq = _rms_norm(attn.q_norm, *attn.q_proj(h).view(heads).chunk(2))
    k, dk = _rms_norm(attn.k_norm, *attn.k_proj(h).view(heads).chunk(2))
    q, dq = apply_rope(torch.cat([q, dq]), *rope).transpose(1, 2).chunk(2)  # RoPE is linear
    k, dk = apply_rope(torch.cat([k, dk]), *rope).transpose(1, 2).chunk(2)
    v, dv = attn.v_proj(h).view(heads).transpose(1, 2).chunk(2)
    out = torch.cat(attention_with_tangent(q, k, v, dq, dk, dv))
    a, da = attn.out_proj(out.transpose(1, 2).reshape(2 * B, L, D)).chunk(2)
    x, dx = x + a * block.attn_scale, dx + da * block.attn_scale

    mlp = block.mlp
    h, dh = _rms_norm(block.norm2, x, dx)
    g, dg = _stacked(mlp.w1, h, dh)
    b, db = _stacked(mlp.w3, h, dh)
    s, ds = _silu_with_tangent(g, dg)
    m, dm = _stacked(mlp.w2, s * b, ds * b + s * db)
    return x + m * block.mlp_scale, dx + dm * block.mlp_scale


def u_with_tangent(net, x, dx, h, dh, omega, t_min, t_max, y):
    """u(x | h, omega, t_min, t_max, y) of an IMFDiT and its derivative along (dx, dh)."""

    def embed(x, h):
        return net.embed(x, h, omega, t_min, t_max, y)

    seq, dseq = torch.func.jvp(embed, (x, h), (dx, dh))
    rope = net._rope()
    for block in [*net.shared_blocks, *net.u_heads]:
        seq, dseq = _block(block, seq, dseq, rope)
    final, p = net.u_final_layer, net.num_prefix
    n, dn = _rms_norm(final.norm, seq[:, p:], dseq[:, p:])
    linear = final.linear._flax_linear
    return net._unpatchify(linear(n)), net._unpatchify(F.linear(dn, linear.weight))
