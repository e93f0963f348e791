"""Gradient descent on the argmin loss, with autograd and ``torch.optim.SGD``."""

from __future__ import annotations

import torch
from torch import nn

from gradwise.cluster import _assign, _common


def gradient(comm, X, weights, centers, mean, max_iter, tol, batch_size, lr, generator, log):
    """Gradient descent on the argmin loss: autograd through ``0.5 * sum w |x - c_a|^2`` and
    SGD on the centres with the gradient of centre k divided by its weight n_k (rate lr / n_k).
    With full batches n_k is the weight assigned in this step, and with lr = 1 each step is
    a Newton step: Lloyd's update. With mini-batches n_k is the weight assigned so far (the
    online k-means of Bottou and Bengio 1995), so steps shrink and the centres converge.
    Empty clusters are relocated as in Lloyd."""
    param = nn.Parameter(centers.clone())
    opt = torch.optim.SGD([param], lr=lr)
    n = X.shape[0]
    n_max = _common.largest_shard(comm, n, X.device)
    full = batch_size >= n_max
    step_size = n if full else batch_size
    seen = torch.zeros(centers.shape[0], dtype=X.dtype, device=X.device)
    labels_old = None
    for i in range(max_iter):
        old = param.detach().clone()
        # every process takes the same number of steps (shards may differ in size)
        order = torch.arange(n) if full else torch.randperm(n_max, generator=generator) % max(n, 1)
        for start in range(0, len(order), step_size):
            index = order[start : start + step_size].to(X.device)
            xb, wb = X[index], weights[index]
            with torch.no_grad():
                labels, sq_dist, sums, counts = _assign.assign(xb, param, shift=mean, weights=wb, sums=True)
                _common.reduce(comm, sums, counts)
            opt.zero_grad()
            _common.loss_given_labels(xb, param, labels, wb).backward()
            with torch.no_grad():
                comm.sum(param.grad, "summing gradients")
                seen = counts if full else seen + counts
                param.grad /= seen.clamp_min(torch.finfo(X.dtype).tiny)[:, None]
            opt.step()
            if full and bool((counts == 0).any()):
                with torch.no_grad():
                    param.copy_(
                        _common.relocate_and_average(comm, xb, wb, param.detach(), mean, sums, counts, labels, sq_dist)
                    )
        shift = float(((param.detach() - old) ** 2).sum())
        if log:
            log(i, float(comm.sum((sq_dist.double() * wb.double()).sum().reshape(1))), shift)
        if full:
            if _common.converged(comm, labels, labels_old):
                break
            labels_old = labels
        if shift <= tol:
            break
    centers = param.detach()
    labels = _assign.assign(X, centers, shift=mean)[0]
    return centers, labels, _common.inertia(comm, X, weights, centers, labels), i + 1
