import pytest
import torch

from imf_core import EMA, PixelCodec, build_model, make_codec, sample, to_uint8
from imf_core.codecs import SD_VAE_MEAN, SD_VAE_STD, codec_from_description, posterior_sample


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4, sample_size=16,
    )
    path = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(path)
    return path


def test_sd_vae_codec_loads_offline_and_normalises_per_channel(tiny_vae_dir, monkeypatch):
    from diffusers import AutoencoderKL

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    codec = make_codec("sd-vae", weights=str(tiny_vae_dir))
    assert codec.latent_shape(16) == (4, 8, 8)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    mean, std = codec.encode(images)
    reference = AutoencoderKL.from_pretrained(tiny_vae_dir).eval()
    with torch.no_grad():
        posterior = reference.encode(images).latent_dist
        raw_decode = reference.decode(posterior.mean).sample.clamp(-1, 1)
    m = torch.tensor(SD_VAE_MEAN).view(1, -1, 1, 1)
    s = torch.tensor(SD_VAE_STD).view(1, -1, 1, 1)
    torch.testing.assert_close(mean, (posterior.mean - m) / s)
    torch.testing.assert_close(std, posterior.std / s)
    torch.testing.assert_close(codec.decode(mean), raw_decode)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    torch.testing.assert_close(posterior_sample(mean, std, g1), posterior_sample(mean, std, g2))
    assert not torch.allclose(posterior_sample(mean, std, g1), mean)
    again = codec_from_description(codec.describe())
    torch.testing.assert_close(again.encode(images)[0], mean)


def test_missing_vae_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="no-such/vae"):
        make_codec("sd-vae", weights="no-such/vae")
    with pytest.raises(ValueError, match="needs weights"):
        make_codec("sd-vae")
    with pytest.raises(ValueError, match="unknown codec 'jpeg'"):
        make_codec("jpeg")


def test_pixel_codec_is_the_identity_on_minus_one_one():
    codec = PixelCodec(channels=1)
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    mean, std = codec.encode(x)
    assert torch.equal(mean, x) and torch.count_nonzero(std) == 0
    assert torch.equal(codec.decode(posterior_sample(mean, std)), x)
    assert torch.equal(to_uint8(torch.tensor([-1.0, 0.0, 1.0, 2.0])),
                       torch.tensor([0, 128, 255, 255], dtype=torch.uint8))


def test_ema_tracks_its_analytic_value():
    net = torch.nn.Linear(3, 2)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    ema = EMA(net, decays=(0.9, 0.5))
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1.0)
    for _ in range(5):
        ema.update(net)
    for d in (0.9, 0.5):
        expected = {k: 1.0 + d**5 * (v - 1.0) for k, v in start.items()}
        for k, v in ema.shadows[d].items():
            torch.testing.assert_close(v, expected[k])
    target = torch.nn.Linear(3, 2)
    ema.copy_to(target, 0.5)
    torch.testing.assert_close(target.weight, 1.0 + 0.5**5 * (start["weight"] - 1.0))
    fresh = EMA(net, decays=(0.9, 0.5))
    fresh.load_state_dict(ema.state_dict())
    torch.testing.assert_close(fresh.shadows[0.9]["weight"], ema.shadows[0.9]["weight"])
    with pytest.raises(KeyError, match="ema_0.99/"):
        EMA(net, decays=(0.99,)).load_state_dict(ema.state_dict())


class ConstantVelocity(torch.nn.Module):
    """u = c * (1 + h): the k-step sampler must land on noise - c * sum_i dt_i (1 + dt_i)."""

    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, z, t, h, omega, t_min, t_max, y):
        return self.c * (1 + h.view(-1, 1)) * torch.ones_like(z), None


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_k_step_sampler_on_the_uniform_grid(steps):
    noise = torch.randn(3, 2)
    out = sample(ConstantVelocity(0.5), noise, torch.zeros(3, dtype=torch.long), steps=steps)
    dt = 1.0 / steps
    torch.testing.assert_close(out, noise - 0.5 * steps * dt * (1 + dt))


def test_one_step_sample_is_noise_minus_u_at_h_one():
    torch.manual_seed(0)
    net = build_model("Micro/2", input_size=8, num_classes=10, v_head=False)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    noise, y = torch.randn(2, 4, 8, 8), torch.tensor([3, 10])
    n = 2
    expected = noise - net(noise, torch.ones(n), torch.ones(n), torch.full((n,), 4.0), torch.full((n,), 0.4),
                           torch.full((n,), 0.65), y)[0]
    torch.testing.assert_close(sample(net, noise, y, omega=4.0, t_min=0.4, t_max=0.65), expected)


def test_ema_warmup_caps_the_decay_early_on():
    net = torch.nn.Linear(2, 1)
    ema = EMA(net, decays=(0.9999,))
    start = ema.shadows[0.9999]["weight"].clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net, step=0)  # decay capped at 1/10
    torch.testing.assert_close(ema.shadows[0.9999]["weight"], 0.1 * start + 0.9 * net.weight.detach())


def test_index_noise_takes_one_seed_per_row():
    """Rows of several requests in one batch: (seeds[k], indices[k]) gives each request's own noise."""
    from imf_core import index_noise

    mixed = index_noise([3, 5, 3], [0, 2, 7], (2, 4, 4))
    assert torch.equal(mixed[[0, 2]], index_noise(3, [0, 7], (2, 4, 4)))
    assert torch.equal(mixed[1], index_noise(5, [2], (2, 4, 4))[0])
    assert not torch.equal(index_noise(3, [2], (2, 4, 4)), index_noise(5, [2], (2, 4, 4)))
    with pytest.raises(ValueError, match="2 seeds for 3 indices"):
        index_noise([1, 2], [0, 1, 2], (2, 4, 4))
