"""One training step (objective + backward + AdamW) of three implementations, side by side.

  fm    flow-matching step of the same network (u and v heads), fused SDPA attention
  ref   imf_core.IMFObjective: the direct port of the authors' step (torch.func.jvp, explicit attention)
  fast  imf_core.FastIMFObjective

Steps are interleaved (repeat 1: fm, ref, fast; repeat 2: ...) and the table gives median
img/s, the median of the per-repeat ratios to fm, and peak memory (CUDA only). A check on
fixed draws first compares fast with ref: loss and worst relative parameter-gradient error.

  CPU smoke:  python bench/train_step.py --device cpu --threads 1 --model Micro/2 --input-size 8 \
                  --num-classes 10 --batch 16 --repeats 3 --steps 2
  H200:       python bench/train_step.py --device cuda --dtype bf16 --model B/2 --batch 128 [--compile]
"""

import argparse
import statistics
import time

import torch

from common import autocast_for, randomize
from imf_core import DrawConfig, FastIMFObjective, FlowMatchingObjective, IMFObjective, build_model, draw_step

JAX_IMF_B2_FP32_B128 = 258.0  # img/s of the authors' JAX iMF step on one H200 (issue 8), not measured here


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast around the step")
    p.add_argument("--model", default="B/2")
    p.add_argument("--shape", default="", help="overrides of the size, e.g. hidden_size=64,depth=12,num_heads=2")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--which", default="fm,ref,fast", help="comma-separated subset of fm, ref, fast")
    p.add_argument("--compile", action="store_true", help="torch.compile fm (the network) and fast (its passes)")
    p.add_argument("--compile-mode", default=None, help="e.g. max-autotune-no-cudagraphs")
    p.add_argument("--row-multiple", type=int, default=None, help="fast: pad pass rows (default 8 if --compile)")
    p.add_argument("--jvp", default="auto", choices=("auto", "manual", "func"), help="fast: the JVP pass")
    p.add_argument("--attention-rule", default="auto", choices=("auto", "sdpa", "explicit"), help="fast, jvp func")
    p.add_argument("--warmup", type=int, default=2, help="steps per implementation before timing")
    p.add_argument("--steps", type=int, default=3, help="timed steps per implementation per repeat")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (1 on a shared machine: "
                   "spinning OpenMP threads make 2-thread timings swing 100x)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--tf32", action="store_true")
    p.add_argument("--no-check", action="store_true")
    return p.parse_args()


def overrides(text):
    pairs = (item.split("=") for item in text.split(",") if item)
    return {k: int(v) for k, v in pairs}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batches(args, device, count=4):
    g = torch.Generator(device=device).manual_seed(0)
    shape = (args.channels, args.input_size, args.input_size)
    out = []
    for _ in range(count):
        x = torch.randn((args.batch, *shape), generator=g, device=device)
        y = torch.randint(args.num_classes, (args.batch,), generator=g, device=device)
        out.append((x, y, draw_step(args.batch, shape, DrawConfig(), g)))
    return out


def objectives(args):
    multiple = args.row_multiple or (8 if args.compile else 1)
    return {
        "fm": FlowMatchingObjective(args.num_classes),
        "ref": IMFObjective(args.num_classes),
        "fast": FastIMFObjective(args.num_classes, jvp=args.jvp, attention_rule=args.attention_rule,
                                 compile=args.compile, compile_mode=args.compile_mode, row_multiple=multiple),
    }


def check(args, net, device, autocast):
    """fast vs ref on the same draws and weights: loss and gradients (no optimizer step)."""
    x, y, draws = batches(args, device, count=1)[0]
    objs = objectives(args)
    grads, losses = {}, {}
    for name in ("ref", "fast"):
        net.zero_grad(set_to_none=True)
        with autocast():
            out = objs[name](net, x, y, draws)
        out.loss.backward()
        losses[name] = out.loss.item()
        grads[name] = [p.grad.float().clone() for p in net.parameters()]
    net.zero_grad(set_to_none=True)
    worst = max(float((a - b).norm() / a.norm().clamp_min(1e-30)) for a, b in zip(grads["ref"], grads["fast"]))
    rel = abs(losses["fast"] - losses["ref"]) / abs(losses["ref"])
    print(f"check fast vs ref on fixed draws: loss {losses['ref']:.6f} vs {losses['fast']:.6f} "
          f"(rel {rel:.1e}), worst relative gradient error {worst:.1e}", flush=True)
    del grads
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main():
    args = parse()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tf32:
        torch.set_float32_matmul_precision("high")
    torch.manual_seed(0)
    net = randomize(build_model(args.model, input_size=args.input_size, in_channels=args.channels,
                                num_classes=args.num_classes, **overrides(args.shape)).to(device))
    autocast = autocast_for(device, args.dtype)
    if not args.no_check:
        check(args, net, device, autocast)

    names = args.which.split(",")
    objs = objectives(args)
    fm_net = torch.compile(net, mode=args.compile_mode) if args.compile else net
    opt = torch.optim.AdamW(net.parameters(), lr=1e-6, betas=(0.9, 0.95), weight_decay=0.0,
                            fused=device.type == "cuda")
    data = batches(args, device)

    def step(name, i):
        x, y, draws = data[i % len(data)]
        opt.zero_grad(set_to_none=True)
        with autocast():
            out = objs[name](fm_net if name == "fm" else net, x, y, draws)
        out.loss.backward()
        opt.step()

    rates = {n: [] for n in names}
    peak, failed, compile_s = {}, {}, {}
    for n in names:  # warm-up (and compilation), one implementation at a time, with its own peak memory
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        try:
            for i in range(args.warmup):
                step(n, i)
            sync(device)
        except torch.OutOfMemoryError:
            failed[n] = "out of memory"
            opt.zero_grad(set_to_none=True)
            continue
        compile_s[n] = time.perf_counter() - start
        if device.type == "cuda":
            peak[n] = torch.cuda.max_memory_allocated(device) / 2**30
    names = [n for n in names if n not in failed]
    for _ in range(args.repeats):
        for n in names:
            sync(device)
            start = time.perf_counter()
            for i in range(args.steps):
                step(n, i)
            sync(device)
            rates[n].append(args.steps * args.batch / (time.perf_counter() - start))
    report(args, device, names, rates, peak, failed, compile_s)


def report(args, device, names, rates, peak, failed, compile_s):
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    model = args.model + (f" ({args.shape})" if args.shape else "")
    print(f"\n{model} {args.input_size}x{args.input_size}x{args.channels}, batch {args.batch}, {args.dtype}, "
          f"{'compiled' if args.compile else 'eager'}, {hw}, torch {torch.__version__}; "
          f"{args.repeats} repeats x {args.steps} steps, medians")
    print("| step | img/s | x fm | peak GiB | warm-up s |\n|---|---|---|---|---|")
    base = rates.get("fm")
    for n in names:
        ratio = statistics.median(a / b for a, b in zip(rates[n], base)) if base else float("nan")
        mem = f"{peak[n]:.1f}" if n in peak else "n/a"
        print(f"| {n} | {statistics.median(rates[n]):.1f} | {ratio:.2f} | {mem} | {compile_s[n]:.1f} |")
    for n, why in failed.items():
        print(f"| {n} | {why} | | | |")
    if "ref" in names and "fast" in names:
        speed = statistics.median(a / b for a, b in zip(rates["fast"], rates["ref"]))
        line = f"fast / ref: {speed:.2f}x throughput"
        if "ref" in peak and "fast" in peak:
            line += f", {peak['fast'] / peak['ref']:.2f}x peak memory"
        print(line)
    if "fast" in names and device.type == "cuda" and args.model == "B/2" and args.batch == 128:
        print(f"fast / authors' JAX step (fp32, 258 img/s on an H200, issue 8): "
              f"{statistics.median(rates['fast']) / JAX_IMF_B2_FP32_B128:.2f}x")


if __name__ == "__main__":
    main()
