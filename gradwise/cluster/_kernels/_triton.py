"""The fused assignment kernel: one pass over ``X`` that computes, per row, the distances to
every centre (tiled over ``K`` and ``D``: the ``N x K`` matrix is never written), their
minimum and its index, the near-tie flag, and for Lloyd the per-centre sums and weights
(atomic adds). Imported only when the Triton path is taken.

The scores are ``|c|^2 - 2 x.c`` on shifted data as in the reference. On CUDA, float32
scores use TF32 tensor cores: the rows they leave within the TF32 bound are recomputed
with IEEE float32 by the same kernel, and the rows still within the float32 bound are
decided in float64 by the reference's ``resolve`` (as on the torch path).
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from gradwise import _backend
from gradwise.cluster._kernels import _reference

OP = "gradwise::kmeans_assign"
_TF32_ROUNDING = 2.0**-10  # the tensor cores truncate float32 inputs to TF32


def _assign_kernel(
    X,
    stride_n,
    stride_d,
    SHIFT,
    C,
    C_SQ,
    X_SQ,
    W,
    LABELS,
    SQ_DIST,
    FLAGGED,
    SUMS,
    COUNTS,
    N,
    K,
    D,
    c_max,
    scale,
    HAS_SHIFT: tl.constexpr,
    HAS_WEIGHTS: tl.constexpr,
    WITH_SUMS: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    dtype = X.dtype.element_ty
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    rows64 = rows.to(tl.int64)
    inf = float("inf")
    best = tl.full((BLOCK_N,), inf, dtype)
    second = tl.full((BLOCK_N,), inf, dtype)
    best_index = tl.zeros((BLOCK_N,), tl.int32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        col_ok = cols < K
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype)
        for d0 in range(0, D, BLOCK_D):
            dims = d0 + tl.arange(0, BLOCK_D)
            dim_ok = dims < D
            mask = row_ok[:, None] & dim_ok[None, :]
            x = tl.load(X + rows64[:, None] * stride_n + dims[None, :] * stride_d, mask=mask, other=0.0)
            if HAS_SHIFT:
                x = tl.where(mask, x - tl.load(SHIFT + dims, mask=dim_ok, other=0.0)[None, :], 0.0)
            c = tl.load(C + cols[None, :] * D + dims[:, None], mask=dim_ok[:, None] & col_ok[None, :], other=0.0)
            acc += tl.dot(x, c, input_precision=PRECISION)
        c_sq = tl.load(C_SQ + cols, mask=col_ok, other=0.0)
        scores = c_sq[None, :] - 2.0 * acc
        # NaN counts as -inf: the row is flagged below and decided by the reference's resolve
        key = tl.where(col_ok[None, :], tl.where(scores != scores, -inf, scores), inf)
        tile_best = tl.min(key, axis=1)
        tile_index = tl.min(tl.where((key == tile_best[:, None]) & col_ok[None, :], cols[None, :], K), axis=1)
        tile_second = tl.min(tl.where(cols[None, :] == tile_index[:, None], inf, key), axis=1)
        better = tile_best < best  # strict: an earlier tile holds the lower indices
        second = tl.where(better, tl.minimum(best, tile_second), tl.minimum(second, tile_best))
        best_index = tl.where(better, tile_index, best_index)
        best = tl.where(better, tile_best, best)
    x_sq = tl.load(X_SQ + rows, mask=row_ok, other=0.0)
    bound = tl.sqrt(x_sq) + c_max
    ok = ((second - best) > scale * bound * bound) & (best > -inf) & (best < inf)
    tl.store(LABELS + rows, best_index, mask=row_ok)
    tl.store(SQ_DIST + rows, tl.maximum(best + x_sq, 0.0), mask=row_ok)
    tl.store(FLAGGED + rows, (~ok).to(tl.int8), mask=row_ok)
    if WITH_SUMS:
        keep = row_ok & ok
        if HAS_WEIGHTS:
            w = tl.load(W + rows, mask=keep, other=0.0)
        else:
            w = tl.full((BLOCK_N,), 1.0, dtype)
        tl.atomic_add(COUNTS + best_index, w.to(tl.float64), mask=keep)
        for d0 in range(0, D, BLOCK_D):
            dims = d0 + tl.arange(0, BLOCK_D)
            dim_ok = dims < D
            mask = keep[:, None] & dim_ok[None, :]
            x = tl.load(X + rows64[:, None] * stride_n + dims[None, :] * stride_d, mask=mask, other=0.0)
            if HAS_SHIFT:
                x = x - tl.load(SHIFT + dims, mask=dim_ok, other=0.0)[None, :]
            if HAS_WEIGHTS:
                x = x * w[:, None]
            tl.atomic_add(SUMS + best_index[:, None] * D + dims[None, :], x, mask=mask)


def _next_power_of_2(n: int, low: int, high: int) -> int:
    return max(low, min(high, triton.next_power_of_2(n)))


def _launch(X, c, c_sq, shift, x_sq, weights, sums_buf, counts_buf, with_sums, precision, scale):
    n, d = X.shape
    k = c.shape[0]
    labels = torch.empty(n, dtype=torch.long, device=X.device)
    sq_dist = torch.empty(n, dtype=X.dtype, device=X.device)
    flagged = torch.empty(n, dtype=torch.int8, device=X.device)
    if _backend.interpret():  # NumPy: few large tiles are fastest
        block_n, block_k, block_d, warps = 64, _next_power_of_2(k, 16, 64), _next_power_of_2(d, 16, 64), 4
    elif X.dtype == torch.float64:
        block_n, block_k, block_d, warps = 64, _next_power_of_2(k, 16, 64), 16, 4
    else:
        block_n, block_k, block_d, warps = 128, _next_power_of_2(k, 16, 128), _next_power_of_2(d, 16, 32), 8
    dummy = X.new_empty(1)
    _backend.launch(
        _assign_kernel,
        (triton.cdiv(n, block_n),),
        X,
        X.stride(0),
        X.stride(1),
        dummy if shift is None else shift,
        c,
        c_sq,
        x_sq,
        dummy if weights is None else weights,
        labels,
        sq_dist,
        flagged,
        sums_buf,
        counts_buf,
        n,
        k,
        d,
        float(c_sq.max().sqrt()) if k else 0.0,
        scale,
        HAS_SHIFT=shift is not None,
        HAS_WEIGHTS=weights is not None,
        WITH_SUMS=with_sums,
        PRECISION=precision,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        BLOCK_D=block_d,
        num_warps=warps,
    )
    return labels, sq_dist, flagged


def precision(X: torch.Tensor) -> str:
    """``tl.dot``'s input precision: TF32 for float32 on CUDA (near-ties recomputed), else IEEE."""
    return "tf32" if X.dtype == torch.float32 and X.device.type == "cuda" else "ieee"


def _assign_impl(
    X: torch.Tensor,
    c: torch.Tensor,
    c_sq: torch.Tensor,
    shift: Optional[torch.Tensor],  # noqa: UP045 (torch.library's schema inference reads typing.Optional)
    x_sq: torch.Tensor,
    weights: Optional[torch.Tensor],  # noqa: UP045
    sums: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    c = c.contiguous()
    c_sq = c_sq.contiguous()
    x_sq = x_sq.contiguous()
    weights = None if weights is None else weights.contiguous()
    k, d = c.shape
    sums_buf = torch.zeros((k, d) if sums else (1,), dtype=X.dtype, device=X.device)
    counts_buf = torch.zeros(k if sums else 1, dtype=torch.float64, device=X.device)
    ieee = _reference.tie_scale(X.dtype, d)
    first = precision(X)
    scale = ieee if first == "ieee" else _reference.tie_scale(X.dtype, d, _TF32_ROUNDING)
    labels, sq_dist, flagged = _launch(X, c, c_sq, shift, x_sq, weights, sums_buf, counts_buf, sums, first, scale)
    if first != "ieee":  # the TF32 near-ties again in IEEE float32; what stays close goes to resolve
        index = flagged.nonzero().reshape(-1)
        if len(index):
            w = None if weights is None else weights[index]
            again = _launch(X[index], c, c_sq, shift, x_sq[index], w, sums_buf, counts_buf, sums, "ieee", ieee)
            labels[index], sq_dist[index], flagged[index] = again
    return labels, sq_dist, flagged, sums_buf, counts_buf


# triton_op lets torch.compile trace into the kernel; Triton's interpreter cannot be traced,
# so there (and before torch 2.6) the op is an opaque custom op with a fake
if not _backend.interpret() and hasattr(torch.library, "triton_op"):
    _assign_op = torch.library.triton_op(OP, _assign_impl, mutates_args=())
else:
    _assign_op = torch.library.custom_op(OP, _assign_impl, mutates_args=())

    @_assign_op.register_fake
    def _(X, c, c_sq, shift, x_sq, weights, sums):
        n, (k, d) = X.shape[0], c.shape
        return (
            X.new_empty(n, dtype=torch.long),
            X.new_empty(n),
            X.new_empty(n, dtype=torch.int8),
            X.new_empty((k, d) if sums else (1,)),
            X.new_empty(k if sums else 1, dtype=torch.float64),
        )


def assign(X, c, c_sq, shift, x_sq, weights, sums):
    """:func:`gradwise.cluster._kernels._reference.assign` by the fused kernel (same results)."""
    labels, sq_dist, flagged, total, counts = _assign_op(X, c, c_sq, shift, x_sq, weights, sums)
    if not sums:
        return labels, sq_dist, flagged.bool(), None, None
    return labels, sq_dist, flagged.bool(), total, counts.to(X.dtype)
