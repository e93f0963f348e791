"""examples/kmeans_gradient_descent.py: SGD on the argmin loss ends where Lloyd ends."""

import torch

import gradwise as gw
from tests.examples import load_example, run_example


def test_sgd_converges_to_lloyd():
    example = load_example("kmeans_gradient_descent")
    X, init = example.make_data()
    lloyd = gw.cluster.KMeans(example.K, init=init).fit(X)
    centers, history = example.sgd_kmeans(X, init)
    assert history[-1] <= history[0]
    assert abs(history[-1] / lloyd.inertia_ - 1) < 1e-3
    order = torch.cdist(centers, lloyd.cluster_centers_).argmin(1)
    assert sorted(order.tolist()) == list(range(example.K))  # one SGD centre per Lloyd centre
    assert (centers - lloyd.cluster_centers_[order]).norm(dim=1).max() < 0.2


def test_script_runs():
    out = run_example("kmeans_gradient_descent")
    assert out.returncode == 0, out.stderr
    assert "epoch | inertia (SGD) | Lloyd's inertia" in out.stdout
