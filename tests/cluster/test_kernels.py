"""The fused assignment kernel (``GRADWISE_KERNELS=triton``, run by Triton's interpreter on
CPU tensors) against the torch reference (``GRADWISE_KERNELS=torch``) and a float64 argmin:
labels identical, distances and sums within float32 rounding."""

import pytest
import torch

pytest.importorskip("triton")

import gradwise as gw
from gradwise.cluster import _assign
from gradwise.cluster._kernels import _triton

SHAPES = [(1, 1, 1), (37, 3, 1), (200, 5, 7), (300, 33, 100), (129, 128, 17), (64, 2, 300)]


def both(monkeypatch, X, C, **kwargs):
    out = {}
    for path in ("torch", "triton"):
        monkeypatch.setenv("GRADWISE_KERNELS", path)
        out[path] = _assign.assign(X, C, **kwargs)
    return out["torch"], out["triton"]


def float64_argmin(X, C):
    return torch.cdist(X.double(), C.double()).argmin(1)


def check_same(ref, ker, X, C):
    """Labels identical; distances within the rounding of ``|x|^2 - 2 x.c + |c|^2`` on either path."""
    assert torch.equal(ref.labels, ker.labels)
    scale = (X.double().norm(dim=1) + C.double().norm(dim=1).max()) ** 2
    bound = 4 * (X.shape[1] + 4) * torch.finfo(X.dtype).eps * scale
    assert bool(((ker.sq_dist.double() - ref.sq_dist.double()).abs() <= bound).all())
    if ref.sums is not None:
        torch.testing.assert_close(ker.sums, ref.sums, equal_nan=True, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ker.counts, ref.counts)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("n", "d", "k"), SHAPES)
def test_kernel_equals_reference_and_the_float64_argmin(monkeypatch, n, d, k, dtype):
    g = torch.Generator().manual_seed(n * 1000 + d + k)
    X = torch.randn(n, d, generator=g, dtype=dtype) * 3 + 10
    C = X[torch.randperm(n, generator=g)[: min(k, n)]] + 0.1 * torch.randn(min(k, n), d, generator=g, dtype=dtype)
    w = torch.rand(n, generator=g, dtype=dtype) + 0.5
    for kwargs in ({}, {"shift": X.mean(0)}, {"shift": X.mean(0), "sums": True}, {"weights": w, "sums": True}):
        ref, ker = both(monkeypatch, X, C, **kwargs)
        check_same(ref, ker, X, C)
        assert torch.equal(ker.labels, float64_argmin(X, C))
    # the sums and counts, from the labels by a plain loop
    ref, ker = both(monkeypatch, X, C, weights=w, sums=True)
    sums = torch.zeros_like(C, dtype=torch.float64)
    for i, label in enumerate(ker.labels.tolist()):
        sums[label] += X[i].double() * w[i].double()
    torch.testing.assert_close(ker.sums.double(), sums, rtol=1e-4, atol=1e-3)


def test_exact_ties_go_to_the_lowest_index_on_both_paths(monkeypatch):
    X = torch.randn(500, 6)
    C = torch.randn(5, 6)
    C = torch.cat([C, C, C[:2]])  # every centre three or two times
    ref, ker = both(monkeypatch, X, C, sums=True)
    check_same(ref, ker, X, C)
    assert torch.equal(ker.labels, torch.cdist(X.double(), C[:5].double()).argmin(1))
    assert int(ker.counts[5:].sum()) == 0


def test_points_halfway_between_two_centres(monkeypatch):
    C = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    X = torch.tensor([[1.0, 0.0], [1.0 + 2**-20, 0.0], [1.0 - 2**-20, 0.0], [0.0, 1.0], [1.0, 1.0]])
    ref, ker = both(monkeypatch, X, C, sums=True)
    check_same(ref, ker, X, C)
    assert ker.labels.tolist() == float64_argmin(X, C).tolist() == [0, 1, 0, 0, 0]


def test_non_finite_rows_and_non_contiguous_input(monkeypatch):
    base = torch.randn(10, 120)
    X = base[:, ::3]  # (10, 40), stride 3
    assert not X.is_contiguous()
    X[2] = float("-inf")
    X[4, 7] = float("nan")
    X[6, 1] = float("inf")
    C = torch.randn(9, 40)
    ref, ker = both(monkeypatch, X, C, sums=True)
    assert torch.equal(ref.labels, ker.labels)
    assert torch.equal(ref.sq_dist.isnan(), ker.sq_dist.isnan())
    finite = ref.sq_dist.isfinite()
    torch.testing.assert_close(ker.sq_dist[finite], ref.sq_dist[finite])
    torch.testing.assert_close(ker.counts, ref.counts)
    fine = [i for i in range(10) if i not in (2, 4, 6)]
    assert torch.equal(ker.labels[fine], float64_argmin(X[fine], C))


def test_the_low_precision_first_pass_is_rechecked(monkeypatch):
    """The CUDA float32 path (TF32 first, the close calls again in IEEE float32): forced here."""
    monkeypatch.setattr(_triton, "precision", lambda X: "tf32")
    X = torch.randn(400, 16)
    C = torch.cat([torch.randn(10, 16), torch.randn(10, 16) * 1e-3])
    ref, ker = both(monkeypatch, X, C, sums=True)
    check_same(ref, ker, X, C)


@pytest.mark.parametrize("algorithm", ["lloyd", "minibatch", "gradient"])
def test_kmeans_fits_the_same_on_both_paths(monkeypatch, algorithm):
    X = torch.randn(300, 5, generator=torch.Generator().manual_seed(1)) + torch.arange(5.0)
    fits = {}
    for path in ("torch", "triton"):
        monkeypatch.setenv("GRADWISE_KERNELS", path)
        fits[path] = gw.cluster.KMeans(11, algorithm=algorithm, random_state=0, n_init=1, max_iter=20).fit(X)
    assert torch.equal(fits["torch"].labels_, fits["triton"].labels_)
    torch.testing.assert_close(fits["triton"].cluster_centers_, fits["torch"].cluster_centers_)
    assert fits["triton"].inertia_ == pytest.approx(fits["torch"].inertia_, rel=1e-5)
