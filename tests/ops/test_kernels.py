"""The Triton kernels of the hard-decision ops against the torch reference, on CPU tensors
through Triton's interpreter (``GRADWISE_KERNELS=triton TRITON_INTERPRET=1``): forward
outputs bit-identical for the same generator, gradients within float32 rounding."""

from __future__ import annotations

import pytest
import torch

import gradwise as gw
from gradwise import _backend
from gradwise.errors import ArgumentError, MissingDependencyError
from gradwise.ops import _kernels
from gradwise.ops._kernels import _reference

triton = pytest.importorskip("triton")

INF = float("inf")

OPS = {
    "argmax st": lambda x, g: gw.ops.argmax_onehot(x, estimator="st"),
    "argmax softmax": lambda x, g: gw.ops.argmax_onehot(x, tau=0.5),
    "argmax reinmax": lambda x, g: gw.ops.argmax_onehot(x, estimator="reinmax", tau=2.0),
    "sample gumbel": lambda x, g: gw.ops.sample_onehot(x, tau=0.7, generator=g),
    "sample reinmax": lambda x, g: gw.ops.sample_onehot(x, estimator="reinmax", generator=g),
    "gumbel_softmax hard": lambda x, g: gw.ops.gumbel_softmax(x, 0.5, True, generator=g),
    "topk": lambda x, g: gw.ops.topk_mask(x, k=min(3, x.shape[-1])),
    "topk reinmax": lambda x, g: gw.ops.topk_mask(x, k=min(2, x.shape[-1]), estimator="reinmax"),
    "gumbel_topk": lambda x, g: gw.ops.gumbel_topk(x, k=min(2, x.shape[-1]), estimator="gumbel", generator=g),
    "dim 0": lambda x, g: gw.ops.argmax_onehot(x, dim=0),
    "non-contiguous": lambda x, g: gw.ops.sample_onehot(x.transpose(0, -1), dim=0, generator=g),
}

SHAPES = [(7, 10), (5, 1), (3, 33), (4, 6, 5), (2, 300)]
DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def _run(monkeypatch, mode: str, op, logits: torch.Tensor):
    monkeypatch.setenv("GRADWISE_KERNELS", mode)
    x = logits.detach().clone().requires_grad_(True)
    y = op(x, torch.Generator().manual_seed(0))
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (y * weights.to(y.dtype)).sum().backward()
    return y.detach(), x.grad


def _logits(shape, dtype) -> torch.Tensor:
    z = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3
    z[0] = -INF  # a row with nothing to choose
    if shape[-1] > 3:
        z[1, ..., :2] = -INF  # masked classes
    return z.to(dtype)


def _assert_same(reference, kernel, dtype):
    (y_ref, g_ref), (y_ker, g_ker) = reference, kernel
    assert torch.equal(y_ref, y_ker), "forward differs"
    # float32 rounding of a softmax VJP (bfloat16: its own rounding of the result)
    tol = {"rtol": 2e-2, "atol": 1e-2} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(g_ker.double(), g_ref.double(), **tol)


@pytest.fixture
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", list(OPS))
def test_kernel_equals_reference(interpreter, monkeypatch, name, shape, dtype):
    logits = _logits(shape, dtype)
    _assert_same(_run(monkeypatch, "torch", OPS[name], logits), _run(monkeypatch, "triton", OPS[name], logits), dtype)


@pytest.mark.parametrize("name", ["argmax softmax", "sample gumbel", "topk", "argmax reinmax"])
def test_nan_propagates_on_both_paths(interpreter, monkeypatch, name):
    logits = _logits((4, 9), torch.float32)
    logits[2, 4] = float("nan")
    (y_ref, g_ref), (y_ker, g_ker) = (_run(monkeypatch, m, OPS[name], logits) for m in ("torch", "triton"))
    torch.testing.assert_close(y_ker, y_ref, equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(g_ker, g_ref, equal_nan=True)
    assert torch.isnan(y_ker[2]).any() and torch.isnan(g_ker[2]).all()
    assert torch.isfinite(g_ker[1]).all()


def test_ties_go_to_the_lowest_index(interpreter, monkeypatch):
    # integer scores: ties everywhere; the rule (largest first, then lowest index) from a Python loop
    scores = torch.randint(0, 3, (40, 17), generator=torch.Generator().manual_seed(3)).float()
    k = 5
    expected = torch.zeros_like(scores)
    for r, row in enumerate(scores.tolist()):
        for c in sorted(range(len(row)), key=lambda c: (-row[c], c))[:k]:
            expected[r, c] = 1
    for mode in ("torch", "triton"):
        monkeypatch.setenv("GRADWISE_KERNELS", mode)
        assert torch.equal(gw.ops.topk_mask(scores, k), expected), mode
        # vmap takes the branch-free reference
        assert torch.equal(torch.vmap(lambda s: gw.ops.topk_mask(s, k))(scores), expected), mode


def test_reference_tie_rule_branch_free_equals_eager():
    scores = torch.randint(0, 4, (30, 11), generator=torch.Generator().manual_seed(4)).double()
    scores[3, 2] = scores[3, 7] = float("nan")
    scores[5] = -INF
    eager = _reference.khot(scores, 4, 1)
    looped = torch.vmap(lambda s: _reference.khot(s, 4, 0))(scores)
    torch.testing.assert_close(looped, eager, equal_nan=True, rtol=0, atol=0)


def test_tensor_tau(interpreter, monkeypatch):
    logits = _logits((6, 12), torch.float32)
    tau = torch.rand(6, 1, generator=torch.Generator().manual_seed(5)) + 0.2
    op = lambda x, g: gw.ops.sample_onehot(x, tau=tau, generator=g)  # noqa: E731
    _assert_same(_run(monkeypatch, "torch", op, logits), _run(monkeypatch, "triton", op, logits), torch.float32)
    # a tau that needs a gradient is served by the reference on both paths
    grads = []
    for mode in ("torch", "triton"):
        monkeypatch.setenv("GRADWISE_KERNELS", mode)
        t = tau.clone().requires_grad_(True)
        gw.ops.argmax_onehot(logits, tau=t).mul(torch.arange(12.0)).sum().backward()
        grads.append(t.grad)
    torch.testing.assert_close(grads[1], grads[0])


def test_gumbel_rao_and_long_rows_fall_back(interpreter, monkeypatch):
    logits = torch.randn(2, _kernels.MAX_COLUMNS + 3)
    op = lambda x, g: gw.ops.sample_onehot(x, estimator="gumbel-rao", generator=g)  # noqa: E731
    _assert_same(_run(monkeypatch, "torch", op, logits), _run(monkeypatch, "triton", op, logits), torch.float32)


def test_vmap_and_grad_transforms_on_the_kernel_path(interpreter, monkeypatch):
    logits = torch.randn(3, 4, 9, generator=torch.Generator().manual_seed(6))
    weights = torch.randn(9)

    def loss(z):
        return (gw.ops.argmax_onehot(z, tau=0.8) * weights).sum()

    results = []
    for mode in ("torch", "triton"):
        monkeypatch.setenv("GRADWISE_KERNELS", mode)
        results.append((torch.vmap(gw.ops.argmax_onehot)(logits), torch.vmap(torch.func.grad(loss))(logits)))
    assert torch.equal(results[0][0], results[1][0])
    torch.testing.assert_close(results[1][1], results[0][1])
    # and against a plain loop
    loop = torch.stack([torch.func.grad(loss)(z) for z in logits])
    torch.testing.assert_close(results[1][1], loop)


def test_samples_use_the_same_bits_as_the_noise_module(interpreter, monkeypatch):
    # the sample is the argmax of logits + Gumbel(bits), bits drawn from the generator
    logits = torch.randn(50, 7, generator=torch.Generator().manual_seed(7))
    bits = torch.randint(0, 2**23, logits.shape, generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    u = (bits.double() + 0.5) / 2**23
    expected = torch.nn.functional.one_hot((logits.double() - torch.log(-torch.log(u))).argmax(-1), 7).float()
    for mode in ("torch", "triton"):
        monkeypatch.setenv("GRADWISE_KERNELS", mode)
        assert torch.equal(gw.ops.sample_onehot(logits, generator=torch.Generator().manual_seed(0)), expected)


def test_switch_errors(monkeypatch):
    x = torch.randn(2, 3)
    monkeypatch.setenv("GRADWISE_KERNELS", "cuda")
    with pytest.raises(ArgumentError, match=r"GRADWISE_KERNELS must be one of auto, torch, triton.*'cuda'"):
        gw.ops.argmax_onehot(x)
    monkeypatch.setenv("GRADWISE_KERNELS", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ArgumentError, match="TRITON_INTERPRET=1"):
        gw.ops.argmax_onehot(x)
    monkeypatch.setenv("GRADWISE_KERNELS", "auto")
    assert not _backend.use_triton(x)  # auto: CPU tensors take the reference
    monkeypatch.setenv("GRADWISE_KERNELS", "triton")
    monkeypatch.setattr(_backend._optional, "has", lambda name: False)
    with pytest.raises(MissingDependencyError, match=r"gradwise\[triton\]"):
        gw.ops.argmax_onehot(x)


def test_torch_compile_on_the_kernel_path(interpreter, monkeypatch):
    logits = torch.randn(5, 12, generator=torch.Generator().manual_seed(8))
    monkeypatch.setenv("GRADWISE_KERNELS", "triton")

    def f(z):
        return gw.ops.topk_mask(z, 3, tau=0.5)

    results = []
    for fn in (f, torch.compile(f, backend="aot_eager", fullgraph=True)):
        z = logits.clone().requires_grad_(True)
        y = fn(z)
        y.mul(torch.arange(12.0)).sum().backward()
        results.append((y.detach(), z.grad))
    assert torch.equal(results[0][0], results[1][0])
    torch.testing.assert_close(results[1][1], results[0][1])
