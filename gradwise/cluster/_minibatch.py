"""Mini-batch k-means (Sculley 2010)."""

from __future__ import annotations

import math

import torch

from gradwise.cluster import _assign, _common, _init


def minibatch(
    comm,
    X,
    weights,
    centers,
    mean,
    max_iter,
    tol,
    batch_size,
    generator,
    log,
    reassignment_ratio=0.01,
    max_no_improvement=10,
):
    """Sculley (2010): each centre moves toward its batch points with rate 1 / (its total
    weight so far); centres whose weight stays below ``reassignment_ratio`` of the largest
    are moved to points drawn by squared distance."""
    n = X.shape[0]
    n_max = _common.largest_shard(comm, n, X.device)
    batch_size = min(batch_size, n_max)
    per_pass = max(1, n_max // batch_size)
    steps = max_iter * per_pass
    counts_total = torch.zeros(centers.shape[0], dtype=X.dtype, device=X.device)
    ewa, best_ewa, no_improvement = None, math.inf, 0
    n_total = n if comm.world == 1 else comm.offsets(n, X.device)[1]
    alpha = batch_size * comm.world * 2.0 / (n_total + 1)  # decay of the averaged batch inertia
    for step in range(steps):
        index = (torch.randint(n_max, (batch_size,), generator=generator) % max(n, 1)).to(X.device)
        xb, wb = X[index], weights[index]
        labels, sq_dist, sums, counts = _assign.assign(xb, centers, shift=mean, weights=wb, sums=True)
        _common.reduce(comm, sums, counts)
        old = centers
        seen = counts > 0
        total = counts_total + counts
        moved = (_common.shifted(old, mean) * counts_total[:, None] + sums) / total.clamp_min(1e-30)[:, None]
        centers = torch.where(seen[:, None], moved if mean is None else moved + mean, old)
        counts_total = total
        if step % 10 == 9:  # reassign starved centres (scikit-learn: every few steps)
            starved = counts_total < reassignment_ratio * counts_total.max()
            if bool(starved.any()) and bool((~starved).any()):
                mass = sq_dist * wb
                total_mass = float(comm.sum(mass.sum().reshape(1).double(), "reassigning centres"))
                if total_mass > 0:  # new centres drawn by squared distance, the same on every process
                    draws = torch.rand(int(starved.sum()), generator=generator, dtype=torch.float64) * total_mass
                    centers = centers.clone()
                    centers[starved] = _init.pick(comm, xb, mass, draws)
                    counts_total[starved] = counts_total[~starved].min()
        shift = float(((centers - old) ** 2).sum())
        batch_inertia = float(comm.sum((sq_dist.double() * wb.double()).sum().reshape(1))) / batch_size
        ewa = batch_inertia if ewa is None else ewa * (1 - alpha) + batch_inertia * alpha
        if log:
            log(step, batch_inertia, shift)
        if tol > 0 and shift <= tol:
            break
        if ewa < best_ewa:
            best_ewa, no_improvement = ewa, 0
        else:
            no_improvement += 1
            if no_improvement >= max_no_improvement:
                break
    labels = _assign.assign(X, centers, shift=mean)[0]
    passes = -(-(step + 1) // per_pass)  # n_iter_ counts passes over the data, as scikit-learn's does
    return centers, labels, _common.inertia(comm, X, weights, centers, labels), passes
