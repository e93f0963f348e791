"""Initial centres: greedy k-means++ and uniform sampling, shard-invariant.

Both draw their randomness from one CPU generator that every process seeds alike and
consume it identically, and address points by their global index, so a fit over shards
picks the same centres as a single process on the concatenated data.
"""

from __future__ import annotations

import math

import torch

from gradwise.cluster import _assign
from gradwise.cluster._distributed import Comm
from gradwise.errors import ArgumentError


def pick(comm: Comm, X: torch.Tensor, mass: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The rows at which the global running sum of ``mass`` passes each target
    (``searchsorted(..., right=True)`` in float64), returned on every process."""
    cumsum = torch.cumsum(mass.double(), 0)
    local_total = cumsum[-1:] if len(cumsum) else torch.zeros(1, dtype=torch.float64, device=X.device)
    totals = torch.cat(comm.gather(local_total.clone(), "choosing initial centres")).cpu()
    starts = torch.cumsum(totals, 0) - totals
    holders = [r for r in range(comm.world) if totals[r] > 0]
    rows = torch.zeros(len(targets), X.shape[1], dtype=X.dtype, device=X.device)
    for j, t in enumerate(targets.tolist()):
        owner = max((r for r in holders if starts[r] <= t), default=holders[0])
        if owner == comm.rank:
            local = torch.searchsorted(
                cumsum, torch.tensor([t - starts[owner].item()], dtype=torch.float64, device=X.device), right=True
            )
            rows[j] = X[min(int(local), len(cumsum) - 1)]
    return comm.sum(rows, "choosing initial centres")


def kmeans_plusplus(
    api: str, comm: Comm, X: torch.Tensor, weights: torch.Tensor, n_clusters: int, generator, shift
) -> torch.Tensor:
    """Greedy k-means++ (Arthur and Vassilvitskii 2007, with scikit-learn's ``2 + log k``
    local trials): each new centre is the best of the trials, drawn with probability
    proportional to weight x squared distance to the nearest chosen centre."""
    n_trials = 2 + int(math.log(n_clusters))
    dtype = X.dtype
    centers = torch.empty(n_clusters, X.shape[1], dtype=dtype, device=X.device)
    total_w = comm.sum(weights.sum().reshape(1).clone(), "k-means++")
    u = torch.rand(1, generator=generator, dtype=torch.float64).item()
    centers[0] = pick(comm, X, weights, torch.tensor([u * total_w.item()], dtype=torch.float64))[0]
    closest = _assign.sq_distances(X, centers[0:1], shift)[0]
    potential = comm.sum((weights * closest).sum().reshape(1).clone(), "k-means++").item()
    for c in range(1, n_clusters):
        if potential <= 0:
            raise ArgumentError(
                f"{api}: n_clusters={n_clusters} exceeds the number of distinct points in X ({c}); lower n_clusters"
            )
        draws = torch.rand(n_trials, generator=generator, dtype=torch.float64) * potential
        candidates = pick(comm, X, weights * closest, draws)
        dist = torch.minimum(closest[None, :], _assign.sq_distances(X, candidates, shift))  # (trials, n_local)
        pots = comm.sum((dist * weights).sum(1), "k-means++")
        best = int(torch.argmin(pots))
        potential = pots[best].item()
        closest = dist[best]
        centers[c] = candidates[best]
    return centers


def random_rows(api: str, comm: Comm, X: torch.Tensor, weights: torch.Tensor, n_clusters: int, seed: int):
    """``n_clusters`` distinct points drawn without replacement, with probability
    proportional to weight (Gumbel-top-k over keys hashed from the global index)."""
    offset = comm.offsets(X.shape[0], X.device)[0]
    index = torch.arange(offset, offset + X.shape[0], device=X.device)
    u = _hash_uniform(index, seed).to(X.device)
    keys = torch.log(weights.double()) - torch.log(-torch.log(u))
    # distinct points: the candidates in key order, a repeat of a row already taken skipped; as many
    # candidates as it takes (data with many repeated rows), the same on every process
    wanted = n_clusters
    while True:
        k_local = min(wanted, X.shape[0])
        top = keys.topk(k_local)
        padded_keys = torch.full((wanted,), float("-inf"), dtype=torch.float64, device=X.device)
        padded_rows = torch.zeros(wanted, X.shape[1], dtype=X.dtype, device=X.device)
        padded_keys[:k_local] = top.values
        padded_rows[:k_local] = X[top.indices]
        all_keys = torch.cat(comm.gather(padded_keys, "random init"))
        all_rows = torch.cat(comm.gather(padded_rows, "random init"))
        order = all_keys.argsort(descending=True, stable=True)
        order = order[torch.isfinite(all_keys[order])]
        rows = _distinct_rows(all_rows[order], n_clusters)
        if rows.shape[0] == n_clusters:  # the same on every process: decided from the gathered candidates
            return rows
        if not _more_anywhere(comm, k_local >= X.shape[0], X.device):
            break
        wanted *= 4
    if order.numel() < n_clusters:
        raise ArgumentError(f"{api}: n_clusters={n_clusters} exceeds the number of points with positive weight")
    raise ArgumentError(
        f"{api}: init='random' needs n_clusters={n_clusters} distinct points with positive weight, and X has "
        f"{rows.shape[0]}; lower n_clusters"
    )


def _distinct_rows(rows: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` rows of ``rows`` that repeat no earlier row (fewer if there are not enough)."""
    if rows.shape[0] == 0:
        return rows
    _, inverse = torch.unique(rows, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), rows.shape[0], dtype=torch.long, device=rows.device)
    first.scatter_reduce_(0, inverse, torch.arange(rows.shape[0], device=rows.device), reduce="amin")
    keep = first.sort().values[:n]
    return rows[keep]


def _more_anywhere(comm: Comm, local_exhausted: bool, device: torch.device) -> bool:
    """Whether some process still has candidates it did not offer (all processes agree)."""
    flag = torch.tensor([0.0 if local_exhausted else 1.0], dtype=torch.float64, device=device)
    return float(comm.sum(flag, "random init")) > 0


_MASK64 = (1 << 64) - 1


def _hash_uniform(index: torch.Tensor, seed: int) -> torch.Tensor:
    """Uniforms in (0, 1) from (seed, global index): splitmix64, so independent of sharding."""
    z = index.to(torch.int64).cpu() + _signed((seed * 0x9E3779B97F4A7C15) & _MASK64)
    z = z * _signed(0x9E3779B97F4A7C15)
    z = (z ^ _lshr(z, 30)) * _signed(0xBF58476D1CE4E5B9)
    z = (z ^ _lshr(z, 27)) * _signed(0x94D049BB133111EB)
    z = z ^ _lshr(z, 31)
    top53 = _lshr(z, 11).double()
    return (top53 + 0.5) / float(1 << 53)


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _lshr(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)
