"""The chunked torch assignment (the CPU path) against a float64 argmin and a plain loop: the
mask's dot product (one decided centre, several, none), chunk boundaries, overflow, the
fallback for a GEMM that rounds its inputs."""

import pytest
import torch

from gradwise.cluster import _assign
from gradwise.cluster._kernels import _reference


def float64_argmin(X, C):
    return torch.cdist(X.double(), C.double()).argmin(1)


def loop_sums(X, labels, k, w=None):
    sums = torch.zeros(k, X.shape[1], dtype=torch.float64)
    counts = torch.zeros(k, dtype=torch.float64)
    for i, label in enumerate(labels.tolist()):
        weight = 1.0 if w is None else float(w[i])
        sums[label] += X[i].double() * weight
        counts[label] += weight
    return sums, counts


@pytest.mark.parametrize("chunk_bytes", [64, 1000, 1 << 22])
@pytest.mark.parametrize(("n", "d", "k"), [(1, 1, 1), (257, 3, 2), (300, 17, 50), (1000, 8, 300)])
def test_labels_distances_sums_across_chunk_boundaries(monkeypatch, chunk_bytes, n, d, k):
    monkeypatch.setattr(_assign, "CHUNK_BYTES", chunk_bytes)
    monkeypatch.setattr(_assign, "MIN_CHUNK_ROWS", 7)  # chunks of 7 rows and more, with a remainder
    g = torch.Generator().manual_seed(n + d + k)
    X = torch.randn(n, d, generator=g) * 2 + 5
    C = torch.randn(k, d, generator=g) * 2 + 5
    w = torch.rand(n, generator=g) + 0.1
    out = _assign.assign(X, C, shift=X.mean(0), weights=w, sums=True)
    assert torch.equal(out.labels, float64_argmin(X, C))
    exact = torch.cdist(X.double(), C.double()).min(1).values ** 2
    torch.testing.assert_close(out.sq_dist.double(), exact, rtol=1e-4, atol=1e-3)
    sums, counts = loop_sums(X - X.mean(0), out.labels, k, w)
    torch.testing.assert_close(out.sums.double(), sums, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(out.counts.double(), counts, rtol=1e-5, atol=1e-5)


def test_ties_of_many_centres_are_decided_and_counted_once():
    C = torch.zeros(6, 3)  # six identical centres: every row's mask holds all six
    C[5] = 10.0
    X = torch.randn(50, 3)
    out = _assign.assign(X, C, sums=True)
    assert torch.equal(out.labels, float64_argmin(X, C))
    assert out.labels.tolist() == [0] * 50
    torch.testing.assert_close(out.counts, torch.tensor([50.0, 0, 0, 0, 0, 0]))
    torch.testing.assert_close(out.sums[0], X.sum(0))


def test_one_centre_and_non_finite_rows():
    X = torch.randn(8, 4)
    X[1, 2] = float("inf")
    X[3, 0] = float("nan")
    X[5] = float("-inf")
    out = _assign.assign(X, torch.randn(1, 4), sums=True)
    assert out.labels.tolist() == [0] * 8
    assert torch.isnan(out.sq_dist[3]) and out.sq_dist[[0, 2, 4, 6, 7]].isfinite().all()
    assert float(out.counts[0]) == 8  # every row belongs to the only centre, as torch.argmin says


def test_scores_that_overflow_float32_are_decided_in_float64():
    """Finite rows whose ``x.c`` overflows float32: the minimum is -inf, the float64 pass decides."""
    C = torch.tensor([[1e19, 1e19], [-1e19, -1e19], [0.0, 0.0]])
    X = torch.tensor([[2e19, 2e19], [-3e19, -2e19], [1.0, -1.0]])
    out = _assign.assign(X, C)
    assert out.labels.tolist() == float64_argmin(X, C).tolist() == [0, 1, 2]


@pytest.mark.parametrize("precision", ["high", "medium"])
def test_a_gemm_that_rounds_its_inputs_takes_the_min_path(precision):
    """Under TF32/bfloat16 float32 matmuls, the index dot product could round: ``torch.min``
    with indices instead, the same labels."""
    g = torch.Generator().manual_seed(3)
    X = torch.randn(600, 12, generator=g)
    C = torch.randn(700, 12, generator=g)  # K > 256: indices that bfloat16 cannot hold
    saved = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision(precision)
        out = _assign.assign(X, C, sums=True)
    finally:
        torch.set_float32_matmul_precision(saved)
    assert torch.equal(out.labels, float64_argmin(X, C))
    sums, counts = loop_sums(X, out.labels, 700)
    torch.testing.assert_close(out.counts.double(), counts)
    torch.testing.assert_close(out.sums.double(), sums, rtol=1e-4, atol=1e-4)


def test_the_mask_path_and_the_min_path_agree():
    g = torch.Generator().manual_seed(4)
    X = torch.randn(2000, 6, generator=g, dtype=torch.float64)
    C = torch.randn(40, 6, generator=g, dtype=torch.float64)
    C[7] = C[3]  # an exact tie
    c_sq = (C * C).sum(1)
    fast = _reference.assign(X, C, c_sq, None, None, None, True, 333)
    slow = _reference._assign_by_min(X, C, c_sq, None, None, None, True, 333)
    decided = ~fast[2] & ~slow[2]
    assert torch.equal(fast[0][decided], slow[0][decided])
    torch.testing.assert_close(fast[1], slow[1])
