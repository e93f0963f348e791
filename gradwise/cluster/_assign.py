"""Nearest-centroid assignment in bounded chunks: the N x K distance matrix is never
materialised beyond ``chunk_rows x K``."""

from __future__ import annotations

import torch

# bytes of one chunk of the distance matrix
CHUNK_BYTES = 8388608


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Labels and squared distances to the nearest centre; optionally the weighted sums
    and total weights of the points of each centre (one pass over ``X``).

    Distances use ``|x|^2 - 2 x.c + |c|^2`` on ``X - shift`` (``shift``: the data mean,
    which keeps the expansion accurate in float32), chunk by chunk.

    Args:
        X: ``(N, D)``.
        centers: ``(K, D)`` in the coordinates of ``X`` (not shifted).
        shift: ``(D,)`` subtracted from ``X`` and ``centers`` before the arithmetic.
        x_sq: ``(N,)`` squared norms of the (shifted) rows, if already known.
        weights: ``(N,)`` sample weights (for the sums).
        sums: also return ``(K, D)`` weighted sums of the shifted points and ``(K,)`` weights.

    Returns:
        ``labels (N,) int64``, ``sq_dist (N,)``, ``sums (K, D)`` or None, ``counts (K,)`` or None.
    """
    n, k = X.shape[0], centers.shape[0]
    c = centers if shift is None else centers - shift
    c_sq = (c * c).sum(1)
    labels = torch.empty(n, dtype=torch.long, device=X.device)
    sq_dist = torch.empty(n, dtype=X.dtype, device=X.device)
    total = torch.zeros_like(c) if sums else None
    for start, stop in chunks(n, chunk_rows(k, X.element_size())):
        x = X[start:stop]
        if shift is not None:
            x = x - shift
        scores = torch.addmm(c_sq, x, c.T, beta=1, alpha=-2)  # |c|^2 - 2 x.c
        best, index = scores.min(1)
        labels[start:stop] = index
        rows_sq = (x * x).sum(1) if x_sq is None else x_sq[start:stop]
        sq_dist[start:stop] = (best + rows_sq).clamp_min_(0)
        if sums:
            total.index_add_(0, index, x if weights is None else x * weights[start:stop, None])
    counts = None
    if sums:
        counts = torch.bincount(labels, weights=weights, minlength=k).to(X.dtype)
    return labels, sq_dist, total, counts


def needs_shift(X: torch.Tensor, mean: torch.Tensor, variance: float) -> bool:
    """Whether to centre the data in the distance arithmetic: when the mean is large next to
    the spread, ``|x|^2 - 2 x.c + |c|^2`` cancels catastrophically in float32."""
    return float((mean.double() ** 2).sum()) > variance
