"""1-NFE generation and decoding, side by side.

  authors   the same network run the way the authors' PyTorch inference does it: einsum
            attention, RoPE through complex64 views, RMSNorm with fp32 casts (docs/method.md, "Network")
  ours      imf_core.sample (fused SDPA attention), eager and, with --compile, compiled
  decode    the SD-VAE decoder alone (imf_core's SDVAECodec: bf16, channels-last on CUDA)
  e2e       ours + decoder + uint8 + writing the images (a thread pool writes them)

The decoder is diffusers' AutoencoderKL built from a config with random weights (nothing is
downloaded): --vae sd is the sd-vae-ft-mse architecture, --vae tiny a small one for CPU runs.
Rows are interleaved over repeats; the table gives median img/s and the median per-repeat ratio.

  CPU smoke:  python bench/sample.py --device cpu --threads 1 --model Tiny/2 --input-size 16 \
                  --num-classes 10 --batch 32 --decode-batch 16 --vae tiny --repeats 5 --iters 2
  H200:       python bench/sample.py --device cuda --dtype bf16 --model B/2 --batch 256 --vae sd \
                  --decode-batch 64 --compile
"""

import argparse
import concurrent.futures
import os
import statistics
import tempfile
import time
import types

import numpy as np
import torch

from common import autocast_for, randomize
from imf_core import build_model, make_codec, sample, to_uint8

OMEGA, T_MIN, T_MAX = 8.0, 0.40, 0.65  # the released B/2 1-NFE settings


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast (generator, both "
                   "rows) and a bf16 decoder")
    p.add_argument("--model", default="B/2")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--batch", type=int, default=256, help="generator batch (authors vs ours)")
    p.add_argument("--decode-batch", type=int, default=64, help="decoder and end-to-end batch")
    p.add_argument("--vae", choices=("sd", "tiny", "none"), default="sd")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--compile-mode", default=None)
    p.add_argument("--write", choices=("npz", "png", "none"), default="npz",
                   help="npz: one file per batch (imf sample's default format); png: one file per image")
    p.add_argument("--writers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--threads", type=int, default=None, help="CPU threads (1 on a shared machine: "
                   "spinning OpenMP threads make 2-thread timings swing 100x)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--iters", type=int, default=3, help="batches per row per repeat")
    return p.parse_args()


# --- the authors' way of running the network (written from docs/method.md, "Network", for comparison) ---

def _rms(x, weight, eps):
    return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


def _rope_complex(x, freqs_cis):
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * freqs_cis[None, :, None, :]).flatten(3).type_as(x)


def _block(blk, x, freqs_cis):
    a = blk.attn
    h = _rms(x, blk.norm1.weight, blk.norm1.eps)
    B, L, D = h.shape
    shape = (B, L, a.num_heads, a.head_dim)
    q = _rope_complex(_rms(a.q_proj(h).view(shape), a.q_norm.weight, a.q_norm.eps), freqs_cis).transpose(1, 2)
    k = _rope_complex(_rms(a.k_proj(h).view(shape), a.k_norm.weight, a.k_norm.eps), freqs_cis).transpose(1, 2)
    v = a.v_proj(h).view(shape).transpose(1, 2)
    w = torch.einsum("bhid,bhjd->bhij", q, k) * a.head_dim ** -0.5
    w = w.float().softmax(dim=-1).type_as(q)
    out = torch.einsum("bhij,bhjd->bhid", w, v).transpose(1, 2).reshape(B, L, D)
    x = x + a.out_proj(out) * blk.attn_scale
    return x + blk.mlp(_rms(x, blk.norm2.weight, blk.norm2.eps)) * blk.mlp_scale


def authors_style(net):
    """An object with forward_u running net's weights the authors' way (for imf_core.sample)."""
    freqs_cis = torch.polar(torch.ones_like(net.rope_cos), torch.atan2(net.rope_sin, net.rope_cos))

    def forward_u(x, t, h, omega, t_min, t_max, y):
        seq = net.embed(x, h, omega, t_min, t_max, y)  # the embeddings are the same ops either way
        for blk in [*net.shared_blocks, *net.u_heads]:
            seq = _block(blk, seq, freqs_cis)
        final = net.u_final_layer
        tokens = final.linear(_rms(seq[:, net.num_prefix:], final.norm.weight, final.norm.eps))
        return net._unpatchify(tokens)

    return types.SimpleNamespace(forward_u=forward_u)


# --- the decoder ---

def build_codec(kind, device, dtype, folder):
    from diffusers import AutoencoderKL

    if kind == "sd":  # sd-vae-ft-mse architecture: 4 levels, 8x downsampling
        cfg = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, levels=4)
    else:
        cfg = dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, levels=2)
    levels = cfg.pop("levels")
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * levels,
                        up_block_types=("UpDecoderBlock2D",) * levels, **cfg)
    vae.save_pretrained(folder)
    return make_codec("sd-vae", weights=folder, device=device, dtype=dtype)


class Writer:
    """Writes uint8 images (N, 3, H, W) from a thread pool; `finish()` waits for all writes."""

    def __init__(self, fmt, workers, folder):
        self.fmt, self.folder, self.count = fmt, folder, 0
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
        self.pending = []

    def put(self, images):
        if self.fmt == "none":
            return
        arrays = images.permute(0, 2, 3, 1).numpy()
        if self.fmt == "npz":
            self.pending.append(self.pool.submit(self._npz, arrays, self.count))
        else:
            self.pending.extend(self.pool.submit(self._png, a, self.count + i) for i, a in enumerate(arrays))
        self.count += len(arrays)

    def _npz(self, arrays, index):
        np.savez(os.path.join(self.folder, f"{index % 100000:07d}.npz"), images=arrays)

    def _png(self, array, index):
        from PIL import Image

        Image.fromarray(array).save(os.path.join(self.folder, f"{index % 1000:07d}.png"), compress_level=1)

    def finish(self):
        for f in self.pending:
            f.result()
        self.pending.clear()


def main():
    args = parse()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    bf16 = args.dtype == "bf16"
    autocast = autocast_for(device, args.dtype)
    torch.manual_seed(0)
    net = randomize(build_model(args.model, input_size=args.input_size, num_classes=args.num_classes,
                                v_head=False).to(device).eval().requires_grad_(False))
    g = torch.Generator(device=device).manual_seed(0)
    shape = (4, args.input_size, args.input_size)
    noise = torch.randn((args.batch, *shape), generator=g, device=device)
    labels = torch.randint(args.num_classes, (args.batch,), generator=g, device=device)
    guidance = dict(omega=OMEGA, t_min=T_MIN, t_max=T_MAX)

    authors = authors_style(net)
    with torch.no_grad():
        diff = (sample(authors, noise[:8], labels[:8], **guidance) - sample(net, noise[:8], labels[:8], **guidance))
    print(f"check authors-style vs ours in fp32: max abs difference {diff.abs().max().item():.1e}", flush=True)

    gens = {"authors": authors, "ours": net}
    if args.compile:
        gens["ours compiled"] = types.SimpleNamespace(forward_u=torch.compile(net.forward_u, mode=args.compile_mode))

    def generate(gen, n=args.batch):
        with autocast():
            return sample(gen, noise[:n], labels[:n], **guidance)

    rows = {name: (lambda gen=gen: generate(gen), args.batch) for name, gen in gens.items()}
    tmp = tempfile.TemporaryDirectory()
    writer = None
    try:
        import diffusers  # noqa: F401
    except ImportError:
        print("diffusers is not installed: no decoder rows", flush=True)
        args.vae = "none"
    if args.vae != "none":
        codec = build_codec(args.vae, device, torch.bfloat16 if bf16 else torch.float32, os.path.join(tmp.name, "vae"))
        os.makedirs(os.path.join(tmp.name, "images"))
        writer = Writer(args.write, args.writers, os.path.join(tmp.name, "images"))
        latents = torch.randn((args.decode_batch, *shape), generator=g, device=device)
        best = gens.get("ours compiled", net)

        def end_to_end():
            z = generate(best, args.decode_batch)
            writer.put(to_uint8(codec.decode(z)).cpu())

        rows["decode"] = (lambda: codec.decode(latents), args.decode_batch)
        rows["e2e"] = (end_to_end, args.decode_batch)

    warm = {}
    for name, (fn, _) in rows.items():
        start = time.perf_counter()
        with torch.no_grad():
            fn(), fn()
        if writer:
            writer.finish()
        sync(device)
        warm[name] = time.perf_counter() - start
    rates = {name: [] for name in rows}
    for _ in range(args.repeats):
        for name, (fn, n) in rows.items():
            sync(device)
            start = time.perf_counter()
            with torch.no_grad():
                for _ in range(args.iters):
                    fn()
            if name == "e2e":
                writer.finish()
            sync(device)
            rates[name].append(args.iters * n / (time.perf_counter() - start))
    report(args, device, rates, warm)
    tmp.cleanup()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def report(args, device, rates, warm):
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{args.model} {args.input_size}x{args.input_size}x4, generator batch {args.batch}, decode batch "
          f"{args.decode_batch}, vae {args.vae}, {args.dtype}, write {args.write}, {hw}, torch {torch.__version__}; "
          f"{args.repeats} repeats x {args.iters} batches, medians")
    print("| row | img/s | ratio | to | warm-up s |\n|---|---|---|---|---|")
    baseline = {"authors": None, "ours": "authors", "ours compiled": "authors", "decode": None, "e2e": "decode"}
    for name, r in rates.items():
        base = baseline[name]
        ratio = f"{statistics.median(a / b for a, b in zip(r, rates[base])):.2f}" if base else ""
        print(f"| {name} | {statistics.median(r):.1f} | {ratio} | {base or ''} | {warm[name]:.1f} |")


if __name__ == "__main__":
    main()
