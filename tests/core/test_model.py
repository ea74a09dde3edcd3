import pytest
import torch

from imf_core import build_model, forward_ad_attention, load_official
from imf_core.attention import apply_rope, explicit_attention, rope_tables
from imf_core.checkpoint import load_model, save_model
from imf_core.model import SIZES, IMFDiT, check_model

PAPER_SIZES = {  # params without / with the v-branch (docs/method.md, "Network")
    "B/2": (89e6, 145.6e6),
    "M/2": (174e6, 230.6e6),
    "L/2": (409e6, 509.8e6),
    "XL/2": (610e6, 711.1e6),
}


@pytest.mark.parametrize("name", PAPER_SIZES)
def test_parameter_counts_match_the_paper(name):
    without, with_v = PAPER_SIZES[name]
    with torch.device("meta"):
        lean = build_model(name, v_head=False)
        full = build_model(name)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert abs(count(lean) - without) / without < 0.005
    assert abs(count(full) - with_v) / with_v < 0.0005


def authors_state_shapes(depth, hidden, heads, channels=4, patch=2, num_classes=1000, aux=8):
    """Key names and shapes of the authors' released `iMeanFlow(eval=True)` state dicts."""
    D, hd, mlp = hidden, hidden // heads, int(hidden * 8 / 3)
    shapes = {"net.x_embedder.proj.weight": (D, channels, patch, patch), "net.x_embedder.proj.bias": (D,)}
    for emb in ("h_embedder", "omega_embedder", "cfg_t_start_embedder", "cfg_t_end_embedder"):
        shapes.update({
            f"net.{emb}.mlp.0._flax_linear.weight": (D, 256), f"net.{emb}.mlp.0._flax_linear.bias": (D,),
            f"net.{emb}.mlp.2._flax_linear.weight": (D, D), f"net.{emb}.mlp.2._flax_linear.bias": (D,),
        })
    shapes["net.y_embedder.embedding_table._flax_embedding.weight"] = (num_classes + 1, D)
    for tok, n in (("time", 4), ("class", 8), ("omega", 4), ("t_min", 2), ("t_max", 2)):
        shapes[f"net.{tok}_tokens"] = (n, D)
    blocks = [f"shared_blocks.{i}" for i in range(depth - aux)] + [f"u_heads.{i}" for i in range(aux)]
    for b in blocks:
        p = f"net.{b}."
        shapes.update({p + "norm1.weight": (D,), p + "norm2.weight": (D,), p + "attn_scale": (D,),
                       p + "mlp_scale": (D,), p + "attn.q_norm.weight": (hd,), p + "attn.k_norm.weight": (hd,),
                       p + "mlp.w1._flax_linear.weight": (mlp, D), p + "mlp.w3._flax_linear.weight": (mlp, D),
                       p + "mlp.w2._flax_linear.weight": (D, mlp)})
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[p + f"attn.{proj}._flax_linear.weight"] = (D, D)
    for head in ("u_final_layer", "v_final_layer"):
        shapes.update({f"net.{head}.norm.weight": (D,),
                       f"net.{head}.linear._flax_linear.weight": (patch * patch * channels, D),
                       f"net.{head}.linear._flax_linear.bias": (patch * patch * channels,)})
    return shapes


def write_official(path, shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    torch.save(state, path)
    return state


def test_official_b2_checkpoint_loads_strictly(tmp_path):
    shapes = authors_state_shapes(depth=12, hidden=768, heads=12)
    state = write_official(tmp_path / "iMF-B-2.pth", shapes)
    net = load_official(tmp_path / "iMF-B-2.pth", "B/2")
    assert not net.has_v_head
    loaded = net.state_dict()
    assert set(loaded) == {k.removeprefix("net.") for k in shapes}
    for k, v in state.items():
        assert torch.equal(loaded[k.removeprefix("net.")], v)


def test_official_checkpoint_mismatch_names_the_keys(tmp_path):
    shapes = authors_state_shapes(depth=4, hidden=64, heads=2, aux=2)
    del shapes["net.u_heads.1.attn.q_proj._flax_linear.weight"]
    shapes["net.time_tokens"] = (5, 64)
    shapes["net.extra_tokens"] = (1, 64)
    write_official(tmp_path / "bad.pth", shapes)
    with pytest.raises(ValueError) as err:
        load_official(tmp_path / "bad.pth", "Tiny/2", input_size=32, num_classes=1000)
    message = str(err.value)
    assert "u_heads.1.attn.q_proj._flax_linear.weight" in message
    assert "time_tokens: file (5, 64) vs network (4, 64)" in message
    assert "extra_tokens" in message


def test_official_checkpoint_is_read_without_unpickling_objects(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"net.x": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match="[Ww]eights only"):
        load_official(tmp_path / "evil.pth", "Tiny/2")


def test_rope_real_arithmetic_equals_complex_rotation():
    x = torch.randn(2, 7, 3, 8)
    cos, sin = rope_tables(8, 7)
    pairs = torch.view_as_complex(x.unflatten(-1, (-1, 2)).contiguous())
    rotated = torch.view_as_real(pairs * torch.polar(torch.ones_like(cos), torch.atan2(sin, cos))[None, :, None])
    torch.testing.assert_close(apply_rope(x, cos, sin), rotated.flatten(-2))


def test_fused_and_forward_ad_attention_paths_agree(micro_net):
    q, k, v = torch.randn(3, 2, 4, 9, 16, dtype=torch.float64).unbind(0)
    fused = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(explicit_attention(q, k, v), fused)

    x = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    cond = [torch.rand(3, dtype=torch.float64) for _ in range(4)]
    omega = 1 + 3 * torch.rand(3, dtype=torch.float64)
    y = torch.tensor([0, 4, 10])
    u1, v1 = micro_net(x, cond[0], cond[1], omega, cond[2], cond[3], y)
    with forward_ad_attention():
        u2, v2 = micro_net(x, cond[0], cond[1], omega, cond[2], cond[3], y)
    torch.testing.assert_close(u1, u2)
    torch.testing.assert_close(v1, v2)
    assert u1.abs().mean() > 1e-3  # randomised, so the comparison is not between zeros


def test_branches_compose_to_the_full_forward(micro_net):
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    args = (torch.rand(2, dtype=torch.float64), torch.rand(2, dtype=torch.float64),
            torch.full((2,), 2.0, dtype=torch.float64), torch.zeros(2, dtype=torch.float64),
            torch.ones(2, dtype=torch.float64), torch.tensor([1, 10]))
    u, v = micro_net(x, *args)
    torch.testing.assert_close(micro_net.forward_u(x, *args), u)
    torch.testing.assert_close(micro_net.forward_v(x, *args), v)
    assert u.shape == v.shape == x.shape


def test_zero_initialised_network_outputs_zero():
    net = build_model("Micro/2", input_size=8, num_classes=10)
    n = 2
    u, v = net(torch.randn(n, 4, 8, 8), torch.rand(n), torch.rand(n), torch.ones(n), torch.zeros(n),
               torch.ones(n), torch.tensor([0, 10]))
    assert torch.count_nonzero(u) == 0 and torch.count_nonzero(v) == 0


def test_save_and_load_round_trip(tmp_path, micro_net):
    net = micro_net.float()
    save_model(tmp_path / "m", net, extra={"note": "x"})
    assert (tmp_path / "m" / "model.safetensors").is_file()
    again = load_model(tmp_path / "m")
    for (k, a), (k2, b) in zip(net.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    lean = load_model(tmp_path / "m", v_head=False)
    assert not any(k.startswith("v_heads.") for k in lean.state_dict())


def test_unknown_size_is_refused():
    with pytest.raises(ValueError, match="unknown model 'Q/2'"):
        build_model("Q/2")


CHECK_CASES = [(name, {}) for name in SIZES] + [
    ("B/2", {"num_heads": 7}), ("Micro/2", {"hidden_size": 30}), ("Micro/2", {"patch_size": 3}),
    ("Micro/2", {"input_size": 12, "patch_size": 4}), ("Micro/2", {"aux_head_depth": 0}),
    ("Micro/2", {"aux_head_depth": 4}), ("Micro/2", {"depth": 1}), ("Micro/2", {"hidden_size": 48, "num_heads": 4}),
    ("Micro/2", {"heads": 2}), ("Nano/2", {})]


@pytest.mark.parametrize("name,overrides", CHECK_CASES)
def test_check_model_refuses_exactly_what_a_build_refuses(name, overrides):
    """check_model (config validation, no build) against the network's constructor on the meta device."""
    built = ValueError if name not in SIZES else None
    try:
        with torch.device("meta"):
            IMFDiT(**{**SIZES.get(name, {}), **overrides})
    except (ValueError, TypeError) as err:
        built = type(err)
    try:
        check_model(name, **overrides)
        checked = None
    except (ValueError, TypeError) as err:
        checked = type(err)
    assert checked is built
