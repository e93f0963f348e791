"""Triton kernels of the hard-decision hot paths, on rows of a contiguous ``(R, C)`` view.

The functions are plain Python (no ``@triton.jit``): :func:`gradwise._backend.jit`
decorates them on first use, once per interpreter mode. Each program handles ``ROWS``
rows of ``BLOCK >= C`` columns held in registers, so a row is read once per pass.

The arithmetic is the reference's (``_reference.py``), op for op: the same Gumbel
expression from the same bits, the same tie rule (NaN highest, then the largest value,
then the lowest index), the softmax VJP ``p * (g - <p, g>)`` recomputed from the logits
instead of saving ``p``.
"""

from __future__ import annotations

import triton
import triton.language as tl

# rule ids of backward_kernel (estimator names in ops/_estimators.py)
RULES = {"st": 0, "softmax": 1, "gumbel": 2, "reinmax": 3}


def forward_kernel(
    z_ptr,
    bits_ptr,
    out_ptr,
    R,
    C,
    k,
    HAS_NOISE: tl.constexpr,
    F64: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)[:, None]
    cols = tl.arange(0, BLOCK)[None, :]
    inside = (rows < R) & (cols < C)
    offsets = rows.to(tl.int64) * C + cols
    dtype = tl.float64 if F64 else tl.float32
    x = tl.load(z_ptr + offsets, mask=inside, other=float("-inf")).to(dtype)
    if HAS_NOISE:
        b = tl.load(bits_ptr + offsets, mask=inside, other=0)
        x = x + -tl.log(-tl.log((b.to(dtype) + 0.5) * 1.1920928955078125e-07))
    is_nan = x != x
    marks = tl.where(is_nan, x, tl.where(x > float("-inf"), 1.0, 0.0).to(dtype))
    out = tl.zeros([ROWS, BLOCK], dtype=dtype)
    free = inside
    for _ in range(k):
        first_nan = tl.min(tl.where(free & is_nan, cols, BLOCK), axis=1)
        number = free & (x == x)
        values = tl.where(number, x, float("-inf"))
        best = tl.max(values, axis=1)
        first_best = tl.min(tl.where(number & (values == best[:, None]), cols, BLOCK), axis=1)
        pick = tl.where(first_nan < BLOCK, first_nan, first_best)
        hit = cols == pick[:, None]
        out = tl.where(hit, marks, out)
        free = free & (cols != pick[:, None])
    tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=inside)


def backward_kernel(
    g_ptr,
    z_ptr,
    bits_ptr,
    hard_ptr,
    tau_ptr,
    out_ptr,
    R,
    C,
    tau,
    k,
    RULE: tl.constexpr,
    TAU_ROWS: tl.constexpr,
    F64: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)[:, None]
    cols = tl.arange(0, BLOCK)[None, :]
    inside = (rows < R) & (cols < C)
    offsets = rows.to(tl.int64) * C + cols
    dtype = tl.float64 if F64 else tl.float32
    x = tl.load(z_ptr + offsets, mask=inside, other=float("-inf")).to(dtype)
    g = tl.load(g_ptr + offsets, mask=inside, other=0.0).to(dtype)
    # a row with no finite logit chose nothing and passes no gradient; a NaN row stays valid (NaN shows)
    valid = tl.max(tl.where(inside & ((x > float("-inf")) | (x != x)), 1, 0), axis=1)[:, None] > 0
    if RULE == 0:
        grad = g
    else:
        if TAU_ROWS:
            t = tl.load(tau_ptr + rows, mask=rows < R, other=1.0).to(dtype)
        else:
            t = tau
        if RULE == 2:
            b = tl.load(bits_ptr + offsets, mask=inside, other=0)
            x = x + -tl.log(-tl.log((b.to(dtype) + 0.5) * 1.1920928955078125e-07))
        # softmax(x / t) by rows (helpers are not jitted: written out); an all -inf row gives
        # NaN here, as torch.softmax, and is zeroed below
        zt = x / t
        e = tl.where(inside, tl.exp(zt - tl.max(tl.where(inside, zt, float("-inf")), axis=1)[:, None]), 0.0)
        p = e / tl.sum(e, axis=1)[:, None]
        if RULE == 3:
            h = tl.load(hard_ptr + offsets, mask=inside, other=0.0).to(dtype)
            half = (p + h / k) * 0.5
            e0 = tl.where(inside, tl.exp(x - tl.max(tl.where(inside, x, float("-inf")), axis=1)[:, None]), 0.0)
            p0 = e0 / tl.sum(e0, axis=1)[:, None]
            v_half = half * (g - tl.sum(half * g, axis=1)[:, None])
            v_0 = p0 * (g - tl.sum(p0 * g, axis=1)[:, None])
            grad = (v_half * 2 - v_0 * 0.5) * k
        else:
            grad = p * (g - tl.sum(p * g, axis=1)[:, None]) * (k / t)
    grad = tl.where(valid, grad, 0.0)
    tl.store(out_ptr + offsets, grad.to(out_ptr.dtype.element_ty), mask=inside)


def launch_shape(C: int) -> tuple[int, int, int]:
    """``(ROWS, BLOCK, num_warps)`` for rows of ``C`` columns."""
    block = triton.next_power_of_2(max(C, 1))
    rows = max(1, min(64, 2048 // block))
    return rows, block, 4 if rows * block <= 2048 else 8
