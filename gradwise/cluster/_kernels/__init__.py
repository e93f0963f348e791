"""Nearest-centroid assignment (distances, argmin, sums in one pass), dispatched per device.

``GRADWISE_KERNELS`` (:mod:`gradwise._backend`) chooses the torch reference
(:mod:`._reference`, the CPU path) or the fused Triton kernel (:mod:`._triton`, the CUDA
path, and CPU under ``TRITON_INTERPRET=1``), registered as the ``gradwise::kmeans_assign``
custom op. Both flag the same kind of rows, near-ties within their own rounding bound and
non-finite rows, and decide them with the one float64 :func:`._reference.resolve`, so the
labels are the same on both paths; the distances and sums agree to rounding.
"""

from __future__ import annotations

import torch

from gradwise import _backend
from gradwise.cluster._kernels import _reference

# dtypes the Triton kernel computes in (others take the reference)
TRITON_DTYPES = (torch.float32, torch.float64)


def assign(
    X: torch.Tensor,
    centers: torch.Tensor,
    shift: torch.Tensor | None,
    x_sq: torch.Tensor | None,
    weights: torch.Tensor | None,
    sums: bool,
    rows: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Labels, squared distances, and optionally the sums and weights of each centre's
    (shifted) points; see :func:`gradwise.cluster._assign.assign`.

    Returns:
        ``labels (N,) int64``, ``sq_dist (N,)``, ``sums (K, D)`` or None, ``counts (K,)`` or None.
    """
    c = centers if shift is None else centers - shift
    c_sq = (c * c).sum(1)
    if X.dtype in TRITON_DTYPES and _backend.use_triton(X):
        from gradwise.cluster._kernels import _triton

        if x_sq is None:
            x_sq = row_norms(X, shift, rows)
        labels, sq_dist, flagged, total, counts = _triton.assign(X, c, c_sq, shift, x_sq, weights, sums)
    else:
        labels, sq_dist, flagged, total, counts = _reference.assign(X, c, c_sq, shift, x_sq, weights, sums, rows)
    index = flagged.nonzero().reshape(-1)
    if len(index):
        rows_x = X[index]
        labels[index], sq_dist[index] = _reference.resolve(rows_x, centers, shift, rows)
        if sums:
            x = rows_x if shift is None else rows_x - shift
            w = None if weights is None else weights[index]
            total.index_add_(0, labels[index], x if w is None else x * w[:, None])
            counts += torch.bincount(labels[index], weights=w, minlength=c.shape[0]).to(counts.dtype)
    return labels, sq_dist, total, counts


def row_norms(X: torch.Tensor, shift: torch.Tensor | None, rows: int) -> torch.Tensor:
    """``|x_i - shift|^2`` for every row, ``rows`` rows at a time."""
    out = torch.empty(X.shape[0], dtype=X.dtype, device=X.device)
    for start in range(0, X.shape[0], rows):
        x = X[start : start + rows]
        if shift is not None:
            x = x - shift
        out[start : start + rows] = (x * x).sum(1)
    return out
