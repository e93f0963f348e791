"""What the algorithms share: the all-reduce of sums and counts, the relocation of empty
clusters, the inertia, the convergence test, and the chunked passes over ``X``."""

from __future__ import annotations

import torch

from gradwise.cluster import _assign
from gradwise.cluster._distributed import Comm


def reduce(comm: Comm, sums: torch.Tensor, counts: torch.Tensor) -> None:
    comm.sum(sums, "summing the clusters")
    comm.sum(counts, "counting the clusters")


def relocate_and_average(comm: Comm, X, weights, centers, mean, sums, counts, labels, sq_dist):
    """New centres from (all-reduced) sums and counts of the shifted points; an empty
    cluster takes the point farthest from its centre, which leaves its old cluster
    (scikit-learn's rule), instead of staying at the origin or becoming NaN."""
    empty = (counts == 0).nonzero().reshape(-1)
    if len(empty):
        n_empty = len(empty)
        k_local = min(n_empty, X.shape[0])
        far = sq_dist.topk(k_local)
        values = torch.full((n_empty,), -1.0, dtype=torch.float64, device=X.device)
        values[:k_local] = far.values.double()
        rows = torch.zeros(n_empty, X.shape[1] + 2, dtype=X.dtype, device=X.device)  # point, weight, old label
        rows[:k_local, :-2] = shifted(X[far.indices], mean)
        rows[:k_local, -2] = weights[far.indices]
        rows[:k_local, -1] = labels[far.indices].to(X.dtype)
        all_values = torch.cat(comm.gather(values, "relocating empty clusters"))
        all_rows = torch.cat(comm.gather(rows, "relocating empty clusters"))
        if float(all_values.max()) > 0:  # all points on their centres: nothing to gain
            for new, pick in zip(empty.tolist(), all_values.topk(n_empty).indices.tolist(), strict=True):
                point, w, old = all_rows[pick, :-2], all_rows[pick, -2], int(all_rows[pick, -1])
                sums[old] -= point * w
                counts[old] -= w
                sums[new] = point * w
                counts[new] = w
    filled = (counts > 0)[:, None]
    averages = sums / counts.clamp_min(torch.finfo(X.dtype).tiny)[:, None]
    return torch.where(filled, averages if mean is None else averages + mean, centers)


def largest_shard(comm: Comm, n: int, device) -> int:
    if comm.world == 1:
        return n
    return int(torch.cat(comm.gather(torch.tensor([n], device=device), "sharing the shard sizes")).max())


def rows_per_pass(X: torch.Tensor) -> int:
    """Rows per chunk of an elementwise pass over X (temporaries of bounded size)."""
    return _assign.chunk_rows(1, 8 * X.shape[1])


def column_sums(X: torch.Tensor) -> torch.Tensor:
    """Column sums in float64, chunk by chunk (``X.sum(0, dtype=float64)`` casts all of X)."""
    total = torch.zeros(X.shape[1], dtype=torch.float64, device=X.device)
    for start, stop in _assign.chunks(X.shape[0], rows_per_pass(X)):
        total += X[start:stop].sum(0, dtype=torch.float64)
    return total


def shifted(x: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
    return x if shift is None else x - shift


def inertia(comm: Comm, X, weights, centers, labels) -> float:
    """``sum_i w_i |x_i - c_{labels_i}|^2``, chunked, all-reduced."""
    total = torch.zeros(1, dtype=torch.float64, device=X.device)
    for start, stop in _assign.chunks(X.shape[0], _assign.chunk_rows(1, X.element_size() * X.shape[1])):
        d = X[start:stop] - centers[labels[start:stop]]
        total += ((d * d).sum(1).double() * weights[start:stop].double()).sum()
    return float(comm.sum(total, "computing the inertia"))


def converged(comm: Comm, labels, labels_old) -> bool:
    """Whether no label changed on any process."""
    changed = torch.tensor([0.0 if labels_old is not None and torch.equal(labels, labels_old) else 1.0])
    return labels_old is not None and float(comm.sum(changed, "checking convergence")) == 0


def loss_given_labels(X, centers, labels, sample_weight=None) -> torch.Tensor:
    diff = X - centers[labels]
    sq = (diff * diff).sum(1)
    if sample_weight is not None:
        sq = sq * sample_weight
    return sq.sum() * 0.5
