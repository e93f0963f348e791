"""The one distance primitive of ``gradwise.cluster``: every distance, argmin and per-centre
sum of the package goes through this module.

:func:`assign` (labels, nearest squared distances, optionally the sums) dispatches to the
fused Triton kernel or the chunked torch reference (:mod:`._kernels`); in the reference
the ``N x K`` distance matrix is never held beyond ``chunk_rows x K``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from gradwise.cluster import _kernels

# bytes of one chunk of the distance matrix: a chunk's scores stay in the last-level cache
# while its minimum, mask and sums are taken; smaller chunks lose more to the per-op cost of
# the CPU path than they gain in cache (measured on the 2-core machine: 4 MiB beat 0.5-2 MiB
# by 1.3-2x at K = 64 and K = 256)
CHUNK_BYTES = 4194304
# rows per chunk at least, so that each GEMM is large enough to run at full speed
MIN_CHUNK_ROWS = 256


class Assignment(NamedTuple):
    """The result of :func:`assign`."""

    labels: torch.Tensor  # (N,) int64
    sq_dist: torch.Tensor  # (N,)
    sums: torch.Tensor | None  # (K, D) weighted sums of the shifted points of each centre
    counts: torch.Tensor | None  # (K,) total weight of each centre


def chunk_rows(n_clusters: int, itemsize: int, budget: int | None = None) -> int:
    """Rows per chunk so that a ``rows x n_clusters`` block fits in ``budget`` bytes."""
    budget = CHUNK_BYTES if budget is None else budget
    return max(1, budget // max(1, n_clusters * itemsize))


def chunks(n: int, rows: int):
    for start in range(0, n, rows):
        yield start, min(n, start + rows)


def assign(
    X: torch.Tensor,
    centers: torch.Tensor,
    *,
    shift: torch.Tensor | None = None,
    x_sq: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    sums: bool = False,
) -> Assignment:
    """Labels and squared distances to the nearest centre; optionally the weighted sums
    and total weights of the points of each centre (one pass over ``X``).

    Distances use ``|x|^2 - 2 x.c + |c|^2`` on ``X - shift`` (``shift``: the data mean,
    which keeps the expansion accurate in float32). Rows whose two nearest centres are
    within the rounding of that arithmetic are decided in float64; ties go to the lowest
    index, as ``torch.argmin``.

    Args:
        X: ``(N, D)``.
        centers: ``(K, D)`` in the coordinates of ``X`` (not shifted).
        shift: ``(D,)`` subtracted from ``X`` and ``centers`` before the arithmetic.
        x_sq: ``(N,)`` squared norms of the (shifted) rows, if already known.
        weights: ``(N,)`` sample weights (for the sums).
        sums: also return ``(K, D)`` weighted sums of the shifted points and ``(K,)`` weights.

    Returns:
        An :class:`Assignment`: ``labels (N,) int64``, ``sq_dist (N,)``, ``sums (K, D)`` or None,
        ``counts (K,)`` or None.
    """
    rows = max(MIN_CHUNK_ROWS, chunk_rows(centers.shape[0], X.element_size()))
    return Assignment(*_kernels.assign(X, centers, shift, x_sq, weights, sums, rows))


def sq_distances(X: torch.Tensor, points: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
    """``(M, N)`` squared distances of the ``M`` points to every row of ``X`` (``|p|^2 - 2 p.x +
    |x|^2`` on shifted data, clamped at 0), chunk by chunk over ``X``."""
    out = torch.empty(points.shape[0], X.shape[0], dtype=X.dtype, device=X.device)
    p = points if shift is None else points - shift
    p_sq = (p * p).sum(1)
    for start, stop in chunks(X.shape[0], chunk_rows(points.shape[0], X.element_size(), 8 * CHUNK_BYTES)):
        x = X[start:stop] if shift is None else X[start:stop] - shift
        out[:, start:stop] = (torch.addmm(p_sq[:, None], p, x.T, beta=1, alpha=-2) + (x * x).sum(1)).clamp_min_(0)
    return out


def distances(X: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """``(N, K)`` Euclidean distances of every row to every centre (materialised: an output)."""
    return torch.cdist(X, centers)


def row_norms(X: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
    """``|x_i - shift|^2`` for every row (computed once per fit, reused by every pass)."""
    return _kernels.row_norms(X, shift, chunk_rows(1, X.element_size() * X.shape[1]))


def needs_shift(X: torch.Tensor, mean: torch.Tensor, variance: float) -> bool:
    """Whether to centre the data in the distance arithmetic: when the mean is large next to
    the spread, ``|x|^2 - 2 x.c + |c|^2`` cancels catastrophically in float32."""
    return float((mean.double() ** 2).sum()) > variance
