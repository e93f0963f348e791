"""The torch implementation of nearest-centroid assignment: the CPU path, and the reference
every kernel is tested against.

One pass over ``X`` in chunks of ``rows`` rows: per chunk, the distance GEMM
(``|c|^2 - 2 x.c`` by ``torch.addmm``), the row minimum and the sums, while the chunk's
scores are still in cache. Rows whose two best scores lie within the rounding bound of the
arithmetic (near-ties, and every non-finite row) are flagged; :func:`resolve` decides them
in float64, the same way on every path, so that the labels do not depend on the order in
which a GEMM happened to sum.
"""

from __future__ import annotations

import torch

# rounding of the GEMM's inputs by the float32 matmul precision ("high": TF32, "medium": bfloat16)
_INPUT_ROUNDING = {"highest": 0.0, "high": 2.0**-9, "medium": 2.0**-7}
# integers exactly representable (the mask's dot product)
_EXACT_INDEX = {torch.float32: 2**24, torch.float64: 2**53}


def tie_scale(dtype: torch.dtype, n_features: int, input_rounding: float = 0.0) -> float:
    """Factor ``t`` of the near-tie bound ``t * (|x| + max|c|)^2``: twice the rounding error of
    ``|c|^2 - 2 x.c`` summed over ``n_features`` products (``input_rounding``: the relative
    error of each product's inputs when the GEMM rounds them, as TF32 does), with a margin."""
    u = torch.finfo(dtype).eps / 2
    return 4.0 * ((n_features + 4) * u + 2 * input_rounding)


def matmul_rounding(X: torch.Tensor) -> float:
    """Relative rounding of the inputs of ``torch.addmm`` on ``X`` (``torch.set_float32_matmul_precision``)."""
    if X.dtype != torch.float32:
        return 0.0
    return _INPUT_ROUNDING.get(torch.get_float32_matmul_precision(), 2.0**-7)


def assign(
    X: torch.Tensor,
    c: torch.Tensor,
    c_sq: torch.Tensor,
    shift: torch.Tensor | None,
    x_sq: torch.Tensor | None,
    weights: torch.Tensor | None,
    sums: bool,
    rows: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Labels, squared distances and the near-tie flags of every row; the weighted sums of the
    shifted points of each centre and their total weights, without the flagged rows.

    Per chunk, in buffers allocated once: the scores ``|c|^2 - 2 x.c`` (``torch.addmm``), their
    row minimum (``torch.amin``, vectorised, unlike ``min`` with indices), then the scores
    become the 0/1 mask of the centres within the near-tie bound of that minimum; a row whose
    mask has exactly one 1 is decided. One dot product of the mask with ``K, K+1, ..., 2K-1``
    gives both: ``K + j`` (exact: one integer plus zeros) when centre ``j`` alone is in the
    mask, at least ``2K`` (rounding is monotone) when several are, 0 when none is (a
    non-finite row). Every row but the first kind is flagged.

    Args:
        X: ``(N, D)``. c: ``(K, D)`` shifted centres. c_sq: ``(K,)`` their squared norms.
        shift: ``(D,)`` or None. x_sq: ``(N,)`` squared norms of the shifted rows, or None.
        weights: ``(N,)`` or None (all 1). sums: whether to compute the sums and weights.
        rows: rows per chunk.

    Returns:
        ``labels (N,) int64``, ``sq_dist (N,)``, ``flagged (N,) bool``, ``sums (K, D)`` or None,
        ``counts (K,)`` or None (both without the flagged rows).
    """
    n, d, k = X.shape[0], X.shape[1], c.shape[0]
    if X.dtype not in _EXACT_INDEX or matmul_rounding(X) > 0 or 2 * k > _EXACT_INDEX[X.dtype]:
        # the mask's dot product must be exact: no rounded GEMM inputs, integers exact up to 2K
        return _assign_by_min(X, c, c_sq, shift, x_sq, weights, sums, rows)
    rows = min(rows, max(n, 1))
    opts = {"dtype": X.dtype, "device": X.device}
    # per row, written by the loop through out=: the minimum score and the mask's dot product
    best_all, dot_all = torch.empty(n, **opts), torch.empty(n, **opts)
    rows_sq_all = torch.empty(n, **opts) if x_sq is None else x_sq
    scale, c_max = tie_scale(X.dtype, d), c_sq.max().sqrt()
    # the bound's part that does not depend on the minimum, for all rows at once when x_sq is known
    margin = None if x_sq is None else _margin(x_sq, c_max, scale)
    # the flagged rows go to a spare row k of the sums, dropped at the end
    total = torch.zeros(k + 1, d, **opts) if sums else None
    slot = torch.empty(n, dtype=torch.long, device=X.device) if sums else None
    weight = torch.arange(k, 2 * k, **opts)  # K + j: the dot product is K + j for one 1, >= 2K for more
    scores_buf, x_buf = torch.empty(rows, k, **opts), torch.empty(rows, d, **opts)
    bound_buf = torch.empty(rows, **opts)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        m = stop - start
        x = X[start:stop]
        if shift is not None:
            x = torch.sub(x, shift, out=x_buf[:m])
        scores = torch.addmm(c_sq, x, c.T, beta=1, alpha=-2, out=scores_buf[:m])
        best = torch.amin(scores, 1, out=best_all[start:stop])
        if margin is None:
            part = _margin(torch.sum(x * x, 1, out=rows_sq_all[start:stop]), c_max, scale)
        else:
            part = margin[start:stop]
        # a non-finite minimum (a non-finite row, or scores past the float range, which implies
        # (|x| + max|c|)^2 is too) comes with an infinite margin: the bound is NaN (no centre in
        # the mask) or inf (all of them), and the row is flagged unless K = 1
        bound = torch.add(best, part, out=bound_buf[:m])
        dot = torch.mv(scores.le_(bound[:, None]), weight, out=dot_all[start:stop])
        if sums:
            slot[start:stop] = _slot(dot, k, bound_buf[:m])
            rows_x = x if weights is None else torch.mul(x, weights[start:stop, None], out=x_buf[:m])
            total.index_add_(0, slot[start:stop], rows_x)
    labels = slot if sums else _slot(dot_all, k, dot_all).long()
    flagged = labels == k
    sq_dist = best_all.add_(rows_sq_all).clamp_min_(0)
    counts = None
    if sums:
        counts = torch.bincount(labels, weights=weights, minlength=k + 1)[:k].to(X.dtype)
        total = total[:k]
    return labels, sq_dist, flagged, total, counts


def _slot(dot: torch.Tensor, k: int, out: torch.Tensor) -> torch.Tensor:
    """The label ``dot - K`` of a decided row (``K <= dot < 2K``), ``K`` for a flagged one (0: no
    centre in the mask, a non-finite row; ``>= 2K``: a near-tie), written to ``out``."""
    return torch.sub(dot, k, out=out).abs_().clamp_max_(k)


def _margin(rows_sq: torch.Tensor, c_max: torch.Tensor, scale: float) -> torch.Tensor:
    """The near-tie bound ``scale * (|x| + max|c|)^2`` of each row (squared before the scale, so
    that it is inf whenever a score can overflow)."""
    return rows_sq.sqrt().add_(c_max).square_().mul_(scale)


def _assign_by_min(
    X: torch.Tensor,
    c: torch.Tensor,
    c_sq: torch.Tensor,
    shift: torch.Tensor | None,
    x_sq: torch.Tensor | None,
    weights: torch.Tensor | None,
    sums: bool,
    rows: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """:func:`assign` for a GEMM that rounds its inputs: ``torch.min`` with indices and the second
    best score by a second pass over the chunk."""
    n, k = X.shape[0], c.shape[0]
    labels = torch.empty(n, dtype=torch.long, device=X.device)
    sq_dist = torch.empty(n, dtype=X.dtype, device=X.device)
    flagged = torch.empty(n, dtype=torch.bool, device=X.device)
    # the flagged rows go to a spare row k of the sums, dropped at the end
    total = torch.zeros(k + 1, c.shape[1], dtype=X.dtype, device=X.device) if sums else None
    scale = tie_scale(X.dtype, X.shape[1], matmul_rounding(X))
    c_max = c_sq.max().sqrt()
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        x = X[start:stop]
        if shift is not None:
            x = x - shift
        scores = torch.addmm(c_sq, x, c.T, beta=1, alpha=-2)  # |c|^2 - 2 x.c
        best, index = scores.min(1)
        rows_sq = (x * x).sum(1) if x_sq is None else x_sq[start:stop]
        sq_dist[start:stop] = (best + rows_sq).clamp_min_(0)
        ok = torch.isfinite(best)
        if k > 1:
            second = scores.scatter_(1, index[:, None], float("inf")).amin(1)
            ok &= (second - best) > scale * (rows_sq.sqrt() + c_max).square()
        flagged[start:stop] = ~ok
        labels[start:stop] = index
        if sums:
            total.index_add_(0, torch.where(ok, index, k), x if weights is None else x * weights[start:stop, None])
    counts = None
    if sums:
        counts = torch.bincount(torch.where(flagged, k, labels), weights=weights, minlength=k + 1)[:k].to(X.dtype)
        total = total[:k]
    return labels, sq_dist, flagged, total, counts


def resolve(
    X: torch.Tensor, centers: torch.Tensor, shift: torch.Tensor | None, rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and squared distances of the rows of ``X`` in float64 (the near-ties of every path).

    Ties go to the lowest index and a NaN row gives label 0 and a NaN distance, as
    ``torch.min`` does.

    Args:
        X: ``(M, D)`` the flagged rows. centers: ``(K, D)`` not shifted. shift: ``(D,)`` or None.
        rows: rows per chunk.

    Returns:
        ``labels (M,) int64``, ``sq_dist (M,)`` in ``X``'s dtype.
    """
    c = centers.double()
    s = None if shift is None else shift.double()
    if s is not None:
        c = c - s
    c_sq = (c * c).sum(1)
    labels = torch.empty(X.shape[0], dtype=torch.long, device=X.device)
    sq_dist = torch.empty(X.shape[0], dtype=X.dtype, device=X.device)
    for start in range(0, X.shape[0], rows):
        x = X[start : start + rows].double()
        if s is not None:
            x = x - s
        best, index = torch.addmm(c_sq, x, c.T, beta=1, alpha=-2).min(1)
        labels[start : start + rows] = index
        sq_dist[start : start + rows] = (best + (x * x).sum(1)).clamp_min_(0).to(X.dtype)
    return labels, sq_dist
