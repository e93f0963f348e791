"""Lloyd's algorithm (exact EM): scikit-learn's loop over the chunked assignment."""

from __future__ import annotations

from gradwise.cluster import _assign, _common


def lloyd(comm, X, weights, centers, mean, max_iter, tol, log, uniform=False):
    """scikit-learn's Lloyd loop: stop when no label changes (strict) or the squared centre
    shift is within ``tol``; without strict convergence, labels are recomputed at the end."""
    labels_old, strict = None, False
    x_sq = _assign.row_norms(X, mean)
    for i in range(max_iter):
        labels, sq_dist, sums, counts = _assign.assign(
            X, centers, shift=mean, x_sq=x_sq, weights=None if uniform else weights, sums=True
        )
        _common.reduce(comm, sums, counts)
        new_centers = _common.relocate_and_average(comm, X, weights, centers, mean, sums, counts, labels, sq_dist)
        shift = float(((new_centers - centers) ** 2).sum())
        if log:
            log(i, float(comm.sum((sq_dist.double() * weights.double()).sum().reshape(1))), shift)
        centers = new_centers
        if _common.converged(comm, labels, labels_old):
            strict = True
            break
        if shift <= tol:
            break
        labels_old = labels
    if not strict:
        labels = _assign.assign(X, centers, shift=mean, x_sq=x_sq)[0]
    return centers, labels, _common.inertia(comm, X, weights, centers, labels), i + 1
