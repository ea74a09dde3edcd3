"""imfDiT: the in-context-conditioned DiT of improved MeanFlow (docs/method.md, "Network").

Conditions (class, omega, CFG interval, time gap h = t - r) become prefix tokens;
no adaLN. A shared trunk feeds a u-branch (average velocity) and an optional
v-branch (auxiliary instantaneous velocity, dropped at inference). Module names
follow the authors' released PyTorch checkpoints so they load as they are.
"""

import inspect
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import apply_rope, attention, rope_tables


class Linear(nn.Module):
    """nn.Linear under the attribute name `_flax_linear`, as in the released checkpoints."""

    def __init__(self, in_features, out_features, bias=True, init_std=None, generator=None):
        super().__init__()
        self._flax_linear = nn.Linear(in_features, out_features, bias=bias)
        if init_std is None:
            nn.init.zeros_(self._flax_linear.weight)
        else:
            nn.init.normal_(self._flax_linear.weight, std=init_std, generator=generator)
        if bias:
            nn.init.zeros_(self._flax_linear.bias)

    def forward(self, x):
        return self._flax_linear(x)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + self.eps) * self.weight


class SwiGLU(nn.Module):
    def __init__(self, dim, hidden, init_std, generator=None):
        super().__init__()
        self.w1 = Linear(dim, hidden, bias=False, init_std=init_std / math.sqrt(dim), generator=generator)
        self.w3 = Linear(dim, hidden, bias=False, init_std=init_std / math.sqrt(dim), generator=generator)
        self.w2 = Linear(hidden, dim, bias=False, init_std=init_std / math.sqrt(hidden), generator=generator)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class RoPEAttention(nn.Module):
    """Multi-head self-attention with QK-RMSNorm and 1-D RoPE, no biases."""

    def __init__(self, dim, num_heads, init_std, generator=None):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        std = init_std / math.sqrt(dim)
        self.q_proj = Linear(dim, dim, bias=False, init_std=std, generator=generator)
        self.k_proj = Linear(dim, dim, bias=False, init_std=std, generator=generator)
        self.v_proj = Linear(dim, dim, bias=False, init_std=std, generator=generator)
        self.out_proj = Linear(dim, dim, bias=False, init_std=std, generator=generator)
        self.q_norm = RMSNorm(self.head_dim)
        self.k_norm = RMSNorm(self.head_dim)

    def forward(self, x, rope):
        B, L, D = x.shape
        shape = (B, L, self.num_heads, self.head_dim)
        q = apply_rope(self.q_norm(self.q_proj(x).view(shape)), *rope)
        k = apply_rope(self.k_norm(self.k_proj(x).view(shape)), *rope)
        v = self.v_proj(x).view(shape)
        out = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.out_proj(out.transpose(1, 2).reshape(B, L, D))


class TransformerBlock(nn.Module):
    """Pre-norm block with per-channel residual gates initialised to zero."""

    def __init__(self, dim, num_heads, mlp_ratio, init_std, generator=None):
        super().__init__()
        self.norm1 = RMSNorm(dim)
        self.attn = RoPEAttention(dim, num_heads, init_std, generator)
        self.norm2 = RMSNorm(dim)
        self.mlp = SwiGLU(dim, int(dim * mlp_ratio), init_std, generator)
        self.attn_scale = nn.Parameter(torch.zeros(dim))
        self.mlp_scale = nn.Parameter(torch.zeros(dim))

    def forward(self, x, rope):
        x = x + self.attn(self.norm1(x), rope) * self.attn_scale
        return x + self.mlp(self.norm2(x)) * self.mlp_scale


class ScalarEmbedder(nn.Module):
    """Scalar in [0, 1] -> 256-dim sinusoid (max period 1e4, no x1000) -> Linear-SiLU-Linear."""

    def __init__(self, dim, freq_dim=256, generator=None):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(
            Linear(freq_dim, dim, init_std=1 / math.sqrt(freq_dim), generator=generator),
            nn.SiLU(),
            Linear(dim, dim, init_std=1 / math.sqrt(dim), generator=generator),
        )

    def forward(self, s):
        half = self.freq_dim // 2
        s = s.to(torch.promote_types(s.dtype, torch.float32))
        freqs = torch.exp(-math.log(1e4) * torch.arange(half, device=s.device, dtype=s.dtype) / half)
        args = s[:, None] * freqs[None]
        return self.mlp(torch.cat((torch.cos(args), torch.sin(args)), dim=-1))


class LabelEmbedder(nn.Module):
    """Class index -> vector; index num_classes is the null (unconditional) class."""

    def __init__(self, num_classes, dim, generator=None):
        super().__init__()
        self.embedding_table = nn.Module()
        self.embedding_table._flax_embedding = nn.Embedding(num_classes + 1, dim)
        nn.init.normal_(self.embedding_table._flax_embedding.weight, std=1 / math.sqrt(dim), generator=generator)

    def forward(self, y):
        return self.embedding_table._flax_embedding(y)


class PatchEmbedder(nn.Module):
    def __init__(self, in_channels, dim, patch_size, generator=None):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        limit = math.sqrt(6.0 / (patch_size * patch_size * in_channels + dim))
        nn.init.uniform_(self.proj.weight, -limit, limit, generator=generator)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class FinalLayer(nn.Module):
    def __init__(self, dim, out_dim):
        super().__init__()
        self.norm = RMSNorm(dim)
        self.linear = Linear(dim, out_dim, bias=True, init_std=None)

    def forward(self, x):
        return self.linear(self.norm(x))


class IMFDiT(nn.Module):
    """u (and v) = net(x, t, h, omega, t_min, t_max, y); x is (B, C, H, W).

    t is accepted for the common conditioning interface but, as in the released
    network, only h = t - r is embedded. generator: where the initial weights are drawn from
    (the global generator if None).
    """

    def __init__(
        self,
        input_size=32,
        patch_size=2,
        in_channels=4,
        hidden_size=768,
        depth=12,
        num_heads=12,
        mlp_ratio=8 / 3,
        num_classes=1000,
        aux_head_depth=8,
        v_head=True,
        num_class_tokens=8,
        num_cfg_tokens=4,
        num_interval_tokens=2,
        num_time_tokens=4,
        weight_init_constant=0.32,
        generator=None,
    ):
        super().__init__()
        check_sizes(input_size, patch_size, hidden_size, depth, num_heads, aux_head_depth)
        self.config = {k: v for k, v in locals().items() if k not in ("self", "__class__", "generator")}
        g = generator
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.has_v_head = v_head
        D = hidden_size

        self.x_embedder = PatchEmbedder(in_channels, D, patch_size, generator=g)
        self.h_embedder = ScalarEmbedder(D, generator=g)
        self.omega_embedder = ScalarEmbedder(D, generator=g)
        self.cfg_t_start_embedder = ScalarEmbedder(D, generator=g)
        self.cfg_t_end_embedder = ScalarEmbedder(D, generator=g)
        self.y_embedder = LabelEmbedder(num_classes, D, generator=g)

        def tokens(n):
            return nn.Parameter(torch.randn(n, D, generator=g) / math.sqrt(D))

        self.class_tokens = tokens(num_class_tokens)
        self.omega_tokens = tokens(num_cfg_tokens)
        self.t_min_tokens = tokens(num_interval_tokens)
        self.t_max_tokens = tokens(num_interval_tokens)
        self.time_tokens = tokens(num_time_tokens)
        self.num_prefix = num_class_tokens + num_cfg_tokens + 2 * num_interval_tokens + num_time_tokens

        num_patches = (input_size // patch_size) ** 2
        cos, sin = rope_tables(D // num_heads, self.num_prefix + num_patches)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

        block = lambda: TransformerBlock(D, num_heads, mlp_ratio, weight_init_constant, g)  # noqa: E731
        self.shared_blocks = nn.ModuleList(block() for _ in range(depth - aux_head_depth))
        self.u_heads = nn.ModuleList(block() for _ in range(aux_head_depth))
        self.v_heads = nn.ModuleList(block() for _ in range(aux_head_depth if v_head else 0))
        out_dim = patch_size * patch_size * in_channels
        self.u_final_layer = FinalLayer(D, out_dim)
        # The released inference checkpoints keep this layer although they drop the v-branch.
        self.v_final_layer = FinalLayer(D, out_dim)

    def trunk(self, x, h, omega, t_min, t_max, y):
        """Embed inputs and conditions, run the shared blocks; returns the token sequence."""
        seq = self.embed(x, h, omega, t_min, t_max, y)
        for block in self.shared_blocks:
            seq = block(seq, self._rope())
        return seq

    def embed(self, x, h, omega, t_min, t_max, y):
        """The prefix tokens of the conditions followed by the patch tokens."""
        return torch.cat(
            [
                self.class_tokens[None] + self.y_embedder(y)[:, None],
                self.omega_tokens[None] + self.omega_embedder(1 - 1 / omega)[:, None],
                self.t_min_tokens[None] + self.cfg_t_start_embedder(t_min)[:, None],
                self.t_max_tokens[None] + self.cfg_t_end_embedder(t_max)[:, None],
                self.time_tokens[None] + self.h_embedder(h)[:, None],
                self.x_embedder(x),
            ],
            dim=1,
        )

    def u_branch(self, seq):
        return self._branch(seq, self.u_heads, self.u_final_layer)

    def v_branch(self, seq):
        if not self.has_v_head:
            raise RuntimeError("this network was built without the v-branch (v_head=False)")
        return self._branch(seq, self.v_heads, self.v_final_layer)

    def forward(self, x, t, h, omega, t_min, t_max, y):
        """Returns (u, v); v is None when the network has no v-branch."""
        seq = self.trunk(x, h, omega, t_min, t_max, y)
        return self.u_branch(seq), (self.v_branch(seq) if self.has_v_head else None)

    def forward_u(self, x, t, h, omega, t_min, t_max, y):
        return self.u_branch(self.trunk(x, h, omega, t_min, t_max, y))

    def forward_v(self, x, t, h, omega, t_min, t_max, y):
        return self.v_branch(self.trunk(x, h, omega, t_min, t_max, y))

    def _rope(self):
        return self.rope_cos, self.rope_sin

    def _branch(self, seq, blocks, final_layer):
        for block in blocks:
            seq = block(seq, self._rope())
        return self._unpatchify(final_layer(seq[:, self.num_prefix :]))

    def _unpatchify(self, tokens):
        B, N, _ = tokens.shape
        p, c, side = self.patch_size, self.in_channels, math.isqrt(N)
        x = tokens.reshape(B, side, side, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(B, c, side * p, side * p)


# Sizes as the paper names them: (hidden_size, depth, num_heads); aux_head_depth 8.
SIZES = {
    "B/2": dict(hidden_size=768, depth=12, num_heads=12, patch_size=2),
    "M/2": dict(hidden_size=768, depth=24, num_heads=12, patch_size=2),
    "L/2": dict(hidden_size=1024, depth=32, num_heads=16, patch_size=2),
    "XL/2": dict(hidden_size=1024, depth=48, num_heads=16, patch_size=2),
    # small networks for CPU runs and tests
    "S/2": dict(hidden_size=384, depth=12, num_heads=6, patch_size=2),
    "Tiny/2": dict(hidden_size=64, depth=4, num_heads=2, patch_size=2, aux_head_depth=2),
    "Micro/2": dict(hidden_size=32, depth=3, num_heads=2, patch_size=2, aux_head_depth=1),
}


def build_model(name: str, generator: torch.Generator | None = None, **overrides) -> IMFDiT:
    """build_model("B/2", input_size=32, in_channels=4, num_classes=1000, v_head=True); initial weights drawn from
    `generator` (the global one if None)."""
    check_model(name, **overrides)
    return IMFDiT(**{**SIZES[name], **overrides}, generator=generator)


def check_sizes(input_size, patch_size, hidden_size, depth, num_heads, aux_head_depth):
    """The shapes IMFDiT can be built with (ValueError otherwise)."""
    if hidden_size % num_heads or (hidden_size // num_heads) % 2:
        raise ValueError(f"hidden_size {hidden_size} must split into {num_heads} heads of even width")
    if input_size % patch_size:
        raise ValueError(f"input_size {input_size} is not a multiple of patch_size {patch_size}")
    if not 0 < aux_head_depth <= depth:
        raise ValueError(f"aux_head_depth {aux_head_depth} must be in [1, depth={depth}]")


def check_model(name: str, **overrides):
    """What build_model(name, **overrides) would refuse, without building: for config validation, where even a
    meta-device build costs a second (its parameter inits import torch._dynamo)."""
    if name not in SIZES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(SIZES)}")
    bound = inspect.signature(IMFDiT.__init__).bind(None, **{**SIZES[name], **overrides})  # TypeError: unknown key
    bound.apply_defaults()
    check_sizes(*(bound.arguments[k] for k in inspect.signature(check_sizes).parameters))
