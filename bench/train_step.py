"""One training step (objective + backward + AdamW) of several implementations, side by side.

  fm        flow-matching step of the same network (u and v heads), fused SDPA attention
  ref       imf_core.IMFObjective: the direct port of the authors' step (torch.func.jvp, explicit attention)
  ref-fd    IMFObjective with finite-difference tangents (every pass through fused SDPA)
  fast      imf_core.FastIMFObjective as configured by --jvp / --attention-rule (default: manual forward-mode AD)
  explicit  the fast step, du/dt by torch.func.jvp through written-out softmax attention
  sdpa      the fast step, du/dt by torch.func.jvp through fused SDPA with a hand-written tangent
  fd        the fast step, du/dt by a central finite difference (two no-grad passes, fused SDPA)

Steps are interleaved (repeat 1: fm, ref, fast, ...; repeat 2: ...); the table gives median img/s,
the median of the per-repeat ratios to fm, peak memory above what was allocated before the step
(weights, optimizer state) and activation memory per image: the peak's growth from batch/2 to batch
over the images added, measured, not estimated (CUDA: the caching allocator's counters; CPU: the
profiler's record of every allocation). A check on fixed draws first compares each iMF row with ref:
loss and worst relative parameter-gradient error.

  CPU smoke:  python bench/train_step.py --device cpu --threads 1 --model Micro/2 --input-size 8 \
                  --num-classes 10 --batch 16 --repeats 3 --steps 2
  B/2-shaped: python bench/train_step.py --device cpu --threads 1 --model B/2 \
                  --shape hidden_size=64,num_heads=2 --num-classes 10 --batch 16 --which fm,explicit,sdpa,fast,fd
  H200:       python bench/train_step.py --device cuda --dtype bf16 --model B/2 --batch 128 [--compile]
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from common import autocast_for, randomize
from imf_core import DrawConfig, FastIMFObjective, FlowMatchingObjective, IMFObjective, build_model, draw_step

JAX_IMF_B2_FP32_B128 = 258.0  # img/s of the authors' JAX iMF step on one H200 (issue 8), not measured here
NAMES = ("fm", "ref", "ref-fd", "fast", "explicit", "sdpa", "fd")


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
    p.add_argument("--which", default="fm,ref,fast", help=f"comma-separated subset of {', '.join(NAMES)}")
    p.add_argument("--compile", action="store_true", help="torch.compile fm (the network) and the fast rows (passes)")
    p.add_argument("--compile-mode", default=None, help="e.g. max-autotune-no-cudagraphs")
    p.add_argument("--row-multiple", type=int, default=None, help="fast rows: pad pass rows (default 8 if --compile)")
    p.add_argument("--jvp", default="auto", choices=("auto", "manual", "func", "finite_difference"), help="fast")
    p.add_argument("--attention-rule", default="auto", choices=("auto", "sdpa", "explicit"), help="fast, jvp func")
    p.add_argument("--jvp-precision", default="auto", choices=("auto", "fp32", "autocast"), help="every iMF row")
    p.add_argument("--warmup", type=int, default=2, help="steps per implementation before timing")
    p.add_argument("--steps", type=int, default=3, help="timed steps per implementation per repeat")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (1 on a shared machine: "
                   "spinning OpenMP threads make 2-thread timings swing 100x)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--tf32", action="store_true")
    p.add_argument("--no-check", action="store_true")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurements")
    return p.parse_args()


def overrides(text):
    pairs = (item.split("=") for item in text.split(",") if item)
    return {k: int(v) for k, v in pairs}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batches(args, device, batch, count=4):
    g = torch.Generator(device=device).manual_seed(0)
    shape = (args.channels, args.input_size, args.input_size)
    out = []
    for _ in range(count):
        x = torch.randn((batch, *shape), generator=g, device=device)
        y = torch.randint(args.num_classes, (batch,), generator=g, device=device)
        out.append((x, y, draw_step(batch, shape, DrawConfig(), g)))
    return out


def objectives(args):
    k, precision = args.num_classes, args.jvp_precision
    fast = dict(compile=args.compile, compile_mode=args.compile_mode,
                row_multiple=args.row_multiple or (8 if args.compile else 1), jvp_precision=precision)
    return {
        "fm": FlowMatchingObjective(k),
        "ref": IMFObjective(k, jvp_precision=precision),
        "ref-fd": IMFObjective(k, jvp="finite_difference", jvp_precision=precision),
        "fast": FastIMFObjective(k, jvp=args.jvp, attention_rule=args.attention_rule, **fast),
        "explicit": FastIMFObjective(k, jvp="func", attention_rule="explicit", **fast),
        "sdpa": FastIMFObjective(k, jvp="func", attention_rule="sdpa", **fast),
        "fd": FastIMFObjective(k, jvp="finite_difference", **fast),
    }


def check(args, names, net, device, autocast):
    """Every iMF row against ref on the same draws and weights: loss and gradients (no optimizer step)."""
    x, y, draws = batches(args, device, args.batch, count=1)[0]
    objs = objectives(args)
    grads, losses = {}, {}
    for name in ["ref", *(n for n in names if n not in ("fm", "ref"))]:
        net.zero_grad(set_to_none=True)
        with autocast():
            out = objs[name](net, x, y, draws)
        out.loss.backward()
        losses[name] = out.loss.item()
        grads[name] = [p.grad.float().clone() for p in net.parameters()]
        if name != "ref":
            worst = max(float((a - b).norm() / a.norm().clamp_min(1e-30)) for a, b in zip(grads["ref"], grads[name]))
            rel = abs(losses[name] - losses["ref"]) / abs(losses["ref"])
            print(f"check {name} vs ref on fixed draws: loss {losses['ref']:.6f} vs {losses[name]:.6f} "
                  f"(rel {rel:.1e}), worst relative gradient error {worst:.1e}", flush=True)
            del grads[name]
    net.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()


def peak_above_start(fn, device) -> float:
    """Bytes allocated at the peak of fn() beyond those allocated when it started."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.empty_cache()
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - start
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as folder:
        trace = Path(folder) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"
              and e["args"].get("Device Type") == 0]  # 0: CPU; the total counts from the profiler's start
    return float(max(totals, default=0))


def main():
    args = parse()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tf32:
        torch.set_float32_matmul_precision("high")
    names = args.which.split(",")
    unknown = set(names) - set(NAMES)
    if unknown:
        raise SystemExit(f"--which: unknown {', '.join(sorted(unknown))} (choose from {', '.join(NAMES)})")
    torch.manual_seed(0)
    net = randomize(build_model(args.model, input_size=args.input_size, in_channels=args.channels,
                                num_classes=args.num_classes, **overrides(args.shape)).to(device))
    autocast = autocast_for(device, args.dtype)
    if not args.no_check:
        check(args, names, net, device, autocast)

    objs = objectives(args)
    fm_net = torch.compile(net, mode=args.compile_mode) if args.compile else net
    opt = torch.optim.AdamW(net.parameters(), lr=1e-6, betas=(0.9, 0.95), weight_decay=0.0,
                            fused=device.type == "cuda")
    data = {args.batch: batches(args, device, args.batch), args.batch // 2: batches(args, device, args.batch // 2)}

    def step(name, i, batch=args.batch):
        x, y, draws = data[batch][i % len(data[batch])]
        opt.zero_grad(set_to_none=True)
        with autocast():
            out = objs[name](fm_net if name == "fm" else net, x, y, draws)
        out.loss.backward()
        opt.step()

    rates = {n: [] for n in names}
    failed, compile_s, memory = {}, {}, {}
    for n in names:  # warm-up (and compilation), one implementation at a time
        start = time.perf_counter()
        try:
            for i in range(args.warmup):
                step(n, i)
            sync(device)
            compile_s[n] = time.perf_counter() - start
            if not args.no_memory:
                step(n, 0, args.batch // 2)  # compiles the half-batch shapes outside the measurement
                half, full = (peak_above_start(lambda b=b, n=n: step(n, 0, b), device)
                              for b in (args.batch // 2, args.batch))
                memory[n] = (full / 2**30, (full - half) / (args.batch - args.batch // 2) / 2**20)
        except torch.OutOfMemoryError:
            failed[n] = "out of memory"
            opt.zero_grad(set_to_none=True)
    names = [n for n in names if n not in failed]
    for _ in range(args.repeats):
        for n in names:
            sync(device)
            start = time.perf_counter()
            for i in range(args.steps):
                step(n, i)
            sync(device)
            rates[n].append(args.steps * args.batch / (time.perf_counter() - start))
    report(args, device, names, rates, memory, failed, compile_s)


def report(args, device, names, rates, memory, failed, compile_s):
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    model = args.model + (f" ({args.shape})" if args.shape else "")
    print(f"\n{model} {args.input_size}x{args.input_size}x{args.channels}, batch {args.batch}, {args.dtype}, "
          f"{'compiled' if args.compile else 'eager'}, {hw}, torch {torch.__version__}; "
          f"{args.repeats} repeats x {args.steps} steps, medians")
    print("| step | img/s | x fm | peak GiB | activations MiB/image | warm-up s |\n|---|---|---|---|---|---|")
    base = rates.get("fm")
    for n in names:
        ratio = statistics.median(a / b for a, b in zip(rates[n], base)) if base else float("nan")
        peak, per_image = (f"{memory[n][0]:.3f}", f"{memory[n][1]:.2f}") if n in memory else ("n/a", "n/a")
        print(f"| {n} | {statistics.median(rates[n]):.1f} | {ratio:.2f} | {peak} | {per_image} | {compile_s[n]:.1f} |")
    for n, why in failed.items():
        print(f"| {n} | {why} | | | | |")
    for n in (n for n in names if n not in ("fm", "ref")):
        if "ref" in names:
            line = f"{n} / ref: {statistics.median(a / b for a, b in zip(rates[n], rates['ref'])):.2f}x throughput"
            if "ref" in memory and n in memory:
                line += f", {memory[n][0] / memory['ref'][0]:.2f}x peak memory"
            print(line)
    if "fast" in names and device.type == "cuda" and args.model == "B/2" and args.batch == 128 and not args.shape:
        print(f"fast / authors' JAX step (fp32, 258 img/s on an H200, issue 8): "
              f"{statistics.median(rates['fast']) / JAX_IMF_B2_FP32_B128:.2f}x")


if __name__ == "__main__":
    main()
