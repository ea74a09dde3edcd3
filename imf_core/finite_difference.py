"""du/dt by a central finite difference: forward passes without gradient, through any attention kernel.

The iMF loss stops the gradient through du/dt (V = u + (t - r) sg(du/dt)), so the tangent has to be
accurate, not differentiable. Two evaluations of u along the tangent (v, 1, 0) of (z, t, r) give

    du/dt ~ (u(z + s v, t + s, r) - u(z - s v, t - s, r)) / (2 s),

run as one pass over 2B rows with no graph. Unlike forward-mode AD (`torch.func.jvp`), such a pass
goes through PyTorch's fused attention kernels (flash, memory-efficient, cuDNN), FSDP's sharded
forward and compiled graphs, as sampling does.

Its error has two parts: truncation, s^2/6 d3u/dt3 (relative error falling as s^2), and rounding,
about the unit roundoff times |u| / (s |du/dt|) (rising as 1/s). In fp32 (roundoff 6e-8) the sum was
smallest at s = 1e-2 to 3e-2 on the parity network and on a B/2-shaped one; at 1e-2 du/dt came within
3.4e-5 and 6.5e-5 of forward-mode AD and every parameter gradient within 8e-7, the size of forward-mode
AD's own fp32 rounding, and within 7.0e-5 with the residual gates 50x larger. DEFAULT_STEP = 1e-2 keeps a
factor of 3 of room toward truncation for networks more curved than these. In bf16 (roundoff 4e-3) the
rounding alone is 57-96% of du/dt at s = 1e-2: the passes run in fp32 ("auto" precision), under
autocast or not. Figures: bench/tangent_accuracy.py, in bench/RESULTS.md.
"""

import contextlib

import torch

DEFAULT_STEP = 1e-2
PRECISIONS = ("auto", "fp32", "autocast", "bf16")


def tangent_precision(precision: str, device_type: str, finite_difference: bool):
    """The context the du/dt passes run in.

    "fp32": autocast off (the network's own precision, fp32 for trained weights); "autocast": whatever
    autocast the step runs under; "bf16": autocast to bf16 (for studies); "auto": fp32 for a finite
    difference, the step's autocast for forward-mode AD (in bf16 its gradients moved no more than
    with an fp32 tangent, and the pass costs less).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"tangent precision {precision!r} is not one of {PRECISIONS}")
    if precision == "auto":
        precision = "fp32" if finite_difference else "autocast"
    if precision == "autocast":
        return contextlib.nullcontext()
    if precision == "fp32":
        return torch.autocast(device_type, enabled=False)
    return torch.autocast(device_type, dtype=torch.bfloat16)


def central_difference(fn, args, tangents, step: float = DEFAULT_STEP) -> torch.Tensor:
    """d/ds fn(*(args + s tangents)) at s = 0, by a central difference of one call of fn on 2B rows.

    tangents: one per argument, None where the argument stays fixed. fn must treat rows independently,
    as a network without batch statistics does.
    """
    if not step > 0:
        raise ValueError(f"finite-difference step {step} must be > 0")
    both = [torch.cat([a, a]) if d is None else torch.cat([a + step * d, a - step * d])
            for a, d in zip(args, tangents, strict=True)]
    plus, minus = fn(*both).chunk(2)
    return (plus - minus) / (2 * step)
