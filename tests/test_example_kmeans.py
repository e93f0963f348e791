"""examples/kmeans_gradient_descent.py: SGD on the argmin loss ends where Lloyd ends."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import torch

import gradwise as gw

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "kmeans_gradient_descent.py"


def test_sgd_converges_to_lloyd():
    spec = importlib.util.spec_from_file_location("kmeans_gd", SCRIPT)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    X, init = example.make_data()
    lloyd = gw.cluster.KMeans(example.K, init=init).fit(X)
    centers, history = example.sgd_kmeans(X, init)
    assert history[-1] <= history[0]
    assert abs(history[-1] / lloyd.inertia_ - 1) < 1e-3
    order = torch.cdist(centers, lloyd.cluster_centers_).argmin(1)
    assert sorted(order.tolist()) == list(range(example.K))  # one SGD centre per Lloyd centre
    assert (centers - lloyd.cluster_centers_[order]).norm(dim=1).max() < 0.2


def test_script_runs():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "epoch | inertia (SGD) | Lloyd's inertia" in out.stdout
