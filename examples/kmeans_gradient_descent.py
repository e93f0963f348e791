"""k-means as a loss with an argmin assignment, trained by SGD on mini-batches, converging to Lloyd.

The loss is half the squared distance of each point to its nearest centre, the nearest
chosen by ``argmin`` (``gw.cluster.kmeans_loss``). Inside a region where the assignments
do not change it is quadratic; centre k's Hessian is ``n_k I``, so SGD with a per-centre
rate ``1 / n_k`` is a Newton step (Bottou and Bengio 1995). On mini-batches, with ``n_k``
the number of points assigned to centre k so far, this is online k-means; it ends where
Lloyd's algorithm, started from the same centres, ends.

Run it from the repository root::

    python examples/kmeans_gradient_descent.py
"""

from __future__ import annotations

import torch

import gradwise as gw

N, D, K = 6000, 2, 6
BATCH = 200
EPOCHS = 12


def make_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random points around K random means, and K initial centres drawn from the points."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(K, D, generator=g) * 4
    X = means[torch.randint(K, (N,), generator=g)] + torch.randn(N, D, generator=g)
    init = X[torch.randperm(N, generator=g)[:K]].clone()
    return X, init


def sgd_kmeans(X: torch.Tensor, init: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, list[float]]:
    """Mini-batch SGD on the argmin loss with per-centre rate 1 / n_k; inertia after each epoch."""
    centers = torch.nn.Parameter(init.clone())
    opt = torch.optim.SGD([centers], lr=1.0)
    seen = torch.zeros(K)
    g = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(EPOCHS):
        for batch in torch.randperm(N, generator=g).split(BATCH):
            xb = X[batch]
            opt.zero_grad()
            gw.cluster.kmeans_loss(xb, centers).backward()
            with torch.no_grad():
                labels = torch.cdist(xb, centers).argmin(1)
                seen += torch.bincount(labels, minlength=K)
                centers.grad /= seen.clamp_min(1)[:, None]  # the Newton rate 1 / n_k
            opt.step()
        history.append(2 * gw.cluster.kmeans_loss(X, centers.detach()).item())
    return centers.detach(), history


def main() -> None:
    X, init = make_data()
    lloyd = gw.cluster.KMeans(K, init=init).fit(X)
    centers, history = sgd_kmeans(X, init)
    print(f"{N} points in {D}-D around {K} means; SGD on the argmin loss, batches of {BATCH}, rate 1/n_k\n")
    print(" epoch | inertia (SGD) | Lloyd's inertia")
    for epoch, inertia in enumerate(history, 1):
        print(f" {epoch:>5} | {inertia:>13.1f} | {lloyd.inertia_:>15.1f}")
    order = torch.cdist(centers, lloyd.cluster_centers_).argmin(1)
    gap = (centers - lloyd.cluster_centers_[order]).norm(dim=1).max().item()
    print(f"\nLloyd converged in {lloyd.n_iter_} iterations from the same initial centres.")
    print(f"Largest distance between an SGD centre and the matching Lloyd centre: {gap:.3f}")
    print(f"Inertia: SGD {history[-1]:.1f}, Lloyd {lloyd.inertia_:.1f} ({history[-1] / lloyd.inertia_ - 1:+.2%})")


if __name__ == "__main__":
    main()
