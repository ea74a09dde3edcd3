"""How accurate are finite-difference tangents, and what does bf16 do to a training step? Two tables.

1. Finite difference against forward-mode AD, per step size: on fixed draws, the relative error of
   du/dt (t != r rows), of mse_u / mse_v / the loss, and of every parameter gradient (worst and median
   tensor) of the fast iMF step, with the finite-difference passes in fp32 and in bf16 (autocast) and
   the rest of the step in fp32. A last row per network: forward-mode AD in fp32 against fp64 (its
   own rounding, the floor any fp32 tangent shares).
2. bf16 autocast against fp32: the fast step under bf16 autocast, with the tangent computed in bf16
   (the step's autocast) or in fp32 (autocast off for that pass), by forward-mode AD or by finite
   difference, against the fp32 step with forward-mode AD: loss error, per-tensor gradient error.

Networks: the parity fixture's (the authors' network layout at depth 3, width 32; its weights and
draws) and a B/2-shaped one (depth 12 with 8 blocks per branch, width 64 unless --b2-shape says
otherwise, 276 tokens of 32x32x4 latents, 1000 classes; random weights, gates included; DrawConfig()
draws). On a GPU, table 2 gains a row for fp32 with TF32 matmuls.

    OMP_NUM_THREADS=1 python bench/tangent_accuracy.py            # CPU, about 2 minutes
    python bench/tangent_accuracy.py --device cuda --b2-shape hidden_size=768,num_heads=12 --batch 32  # B/2 itself
"""

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.core.jax_fixture

from common import randomize  # noqa: E402
from imf_core import DrawConfig, FastIMFObjective, build_model, draw_step  # noqa: E402
from imf_core.finite_difference import DEFAULT_STEP  # noqa: E402
from imf_core.objectives import _dropped_labels, _noisy, guided_target, u_tangent_finite_difference  # noqa: E402
from imf_core.tangent import u_with_tangent  # noqa: E402
from tests.core import jax_fixture  # noqa: E402

STEPS = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5, 1e-6)
PASSES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def parity_case(device):
    data = jax_fixture.load()
    x, y, draws = jax_fixture.batch(data)
    return "parity network (depth 3, width 32)", jax_fixture.build_network(data).to(device), x, y, draws


def b2_shaped_case(device, batch=16, shape=None, seed=0):
    shape = shape or dict(hidden_size=64, num_heads=2)
    torch.manual_seed(seed)
    net = randomize(build_model("B/2", **shape, input_size=32, in_channels=4, num_classes=1000))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 32, 32, generator=g)
    y = torch.randint(1000, (batch,), generator=g)
    draws = draw_step(batch, x.shape[1:], DrawConfig(), g)
    name = ("B/2" if shape["hidden_size"] == 768
            else f"B/2-shaped (depth 12, 8 per branch, width {shape['hidden_size']})")
    return name, net.to(device), x, y, draws


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300))


def tangents(net, x, y, draws, step, dtype):
    """du/dt on the t != r rows along the reference step's v_c: forward-mode AD (fp32) and finite difference."""
    z, v_t = _noisy(x, draws)
    _, v_c = guided_target(net, "aux", z, v_t, y, draws, 1000)
    m = ~draws.boundary
    conds = (draws.omega[m], draws.t_min[m], draws.t_max[m], _dropped_labels(y, draws, 1000)[m])
    with torch.no_grad():
        _, ad = u_with_tangent(net, z[m], v_c[m], (draws.t - draws.r)[m], torch.ones_like(draws.t[m]), *conds)
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
            fd = u_tangent_finite_difference(net, step, z[m], draws.t[m], draws.r[m], *conds, v_c[m])
    return fd, ad


def step_outputs(net, x, y, draws, objective, autocast_dtype=None):
    net.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        out = objective(net, x, y, draws)
    out.loss.backward()
    grads = [p.grad.detach().double().clone() for p in net.parameters()]
    net.zero_grad(set_to_none=True)
    return {k: getattr(out, k).detach().double() for k in ("mse_u", "mse_v", "loss")}, grads


def errors(got, ref):
    (got_terms, got_grads), (ref_terms, ref_grads) = got, ref
    per_tensor = [rel(a, b) for a, b in zip(got_grads, ref_grads) if b.norm() > 0]
    terms = {k: rel(got_terms[k], ref_terms[k]) for k in ref_terms}
    return terms, max(per_tensor), statistics.median(per_tensor)


def finite_difference_table(case, steps=STEPS):
    name, net, x, y, draws = case
    reference = step_outputs(net, x, y, draws, FastIMFObjective(1000, jvp="manual"))
    print(f"\n### {name}, batch {x.shape[0]} ({int((~draws.boundary).sum())} rows with t != r)\n")
    print("| passes | step | du/dt | mse_u | mse_v | loss | gradient, worst tensor | gradient, median tensor |")
    print("|---|---|---|---|---|---|---|---|")
    for label, dtype in PASSES.items():
        for step in steps:
            fd, ad = tangents(net, x, y, draws, step, dtype)
            objective = FastIMFObjective(1000, jvp="finite_difference", jvp_step=step, jvp_precision=label)
            terms, worst, median = errors(step_outputs(net, x, y, draws, objective), reference)
            mark = " (default)" if step == DEFAULT_STEP and label == "fp32" else ""
            print(f"| FD {label} | {step:.0e}{mark} | {rel(fd, ad):.1e} | {terms['mse_u']:.1e} | "
                  f"{terms['mse_v']:.1e} | "
                  f"{terms['loss']:.1e} | {worst:.1e} | {median:.1e} |", flush=True)
    wide = net.double()
    exact = step_outputs(wide, x.double(), y, draws.to(dtype=torch.float64), FastIMFObjective(1000, jvp="manual"))
    net.float()
    terms, worst, median = errors(reference, exact)
    print(f"| forward AD fp32 vs fp64 | | | {terms['mse_u']:.1e} | {terms['mse_v']:.1e} | {terms['loss']:.1e} | "
          f"{worst:.1e} | {median:.1e} |")


def precision_table(case):
    name, net, x, y, draws = case
    reference = step_outputs(net, x, y, draws, FastIMFObjective(1000, jvp="manual"))
    print(f"\n### {name}: the fast step under bf16 autocast against fp32 (forward-mode AD)\n")
    print("| step | tangent | tangent precision | mse_u | loss | gradient, worst tensor | gradient, median tensor |")
    print("|---|---|---|---|---|---|---|")
    rows = [("fp32", "forward AD", "fp32"), ("fp32", "finite difference", "fp32")]
    rows += [("bf16", jvp, precision) for jvp in ("forward AD", "finite difference")
             for precision in ("autocast", "fp32")]
    for step_dtype, jvp, precision in rows:
        method = "manual" if jvp == "forward AD" else "finite_difference"
        objective = FastIMFObjective(1000, jvp=method, jvp_precision=precision)
        autocast = torch.bfloat16 if step_dtype == "bf16" else None
        terms, worst, median = errors(step_outputs(net, x, y, draws, objective, autocast), reference)
        shown = "bf16 (the step's autocast)" if precision == "autocast" else "fp32"
        print(f"| {step_dtype} | {jvp} | {shown} | {terms['mse_u']:.1e} | {terms['loss']:.1e} | {worst:.1e} | "
              f"{median:.1e} |", flush=True)
    if x.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        terms, worst, median = errors(step_outputs(net, x, y, draws, FastIMFObjective(1000, jvp="manual")), reference)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        print(f"| fp32, TF32 matmuls | forward AD | fp32 (TF32) | {terms['mse_u']:.1e} | {terms['loss']:.1e} | "
              f"{worst:.1e} | {median:.1e} |")
    other = draw_step(x.shape[0], x.shape[1:], DrawConfig(), torch.Generator().manual_seed(99)).to(device=x.device)
    other = replace(other, drop=draws.drop)  # same rows dropped: only times, noise and guidance differ
    terms, worst, median = errors(step_outputs(net, x, y, other, FastIMFObjective(1000, jvp="manual")), reference)
    print(f"| fp32, other draws of t, r, noise, guidance | forward AD | fp32 | {terms['mse_u']:.1e} | "
          f"{terms['loss']:.1e} | {worst:.1e} | {median:.1e} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tables", default="fd,bf16", help="comma-separated: fd, bf16")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--b2-shape", default="hidden_size=64,num_heads=2", help="the B/2-shaped network's overrides")
    parser.add_argument("--batch", type=int, default=16, help="the B/2-shaped network's batch")
    parser.add_argument("--step-sizes", default=",".join(f"{s:g}" for s in STEPS), help="table 1's steps")
    args = parser.parse_args()
    if args.device.startswith("cuda"):  # fp32 means fp32: TF32 only in its own row
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shape = {k: int(v) for k, v in (item.split("=") for item in args.b2_shape.split(",") if item)}
    cases = [parity_case(device), b2_shaped_case(device, args.batch, shape)]
    cases = [(name, net, x.to(device), y.to(device), draws.to(device=device)) for name, net, x, y, draws in cases]
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{hw}, torch {torch.__version__}; "
          "relative errors (L2 norm of the difference over the norm of the reference)")
    tables = args.tables.split(",")
    if "fd" in tables:
        print("\n## Finite difference against forward-mode AD (fp32 step)")
        for case in cases:
            finite_difference_table(case, [float(s) for s in args.step_sizes.split(",")])
    if "bf16" in tables:
        print("\n## bf16 autocast against fp32")
        for case in cases:
            precision_table(case)


if __name__ == "__main__":
    main()
