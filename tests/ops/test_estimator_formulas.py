"""Each estimator's backward against its formula, written independently here in float64.

The references use autograd on the surrogate written out in plain torch (for ReinMax,
the stop-gradient form of Algorithm 2 of Liu et al. 2023), not the closed forms of
gradwise.ops._estimators.
"""

import pytest
import torch

import gradwise as gw
from gradwise.ops import _noise

C = 7


def _grad(fn, logits, w, **kw):
    leaf = logits.clone().requires_grad_(True)
    out = fn(leaf, **kw)
    (grad,) = torch.autograd.grad((out * w).sum(), leaf)
    return out.detach(), grad


def _ref_softmax(logits, w, tau, k=1, noise=None):
    leaf = logits.clone().requires_grad_(True)
    z = leaf if noise is None else leaf + noise
    (grad,) = torch.autograd.grad((k * torch.softmax(z / tau, -1) * w).sum(), leaf)
    return grad


def _ref_reinmax(logits, hard, w, tau, k=1):
    leaf = logits.clone().requires_grad_(True)
    d = hard / k
    pi_0 = torch.softmax(leaf, -1)
    pi_half = (torch.softmax(leaf / tau, -1) + d) / 2
    pi_1 = torch.softmax((torch.log(pi_half) - leaf).detach() + leaf, -1)
    pi_2 = 2 * pi_1 - 0.5 * pi_0
    y = k * (pi_2 - pi_2.detach() + d)
    (grad,) = torch.autograd.grad((y * w).sum(), leaf)
    return grad


def _noise_for(seed, shape):
    return _noise.gumbel(shape, dtype=torch.float64, device="cpu", generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def logits():
    return torch.randn(5, C, dtype=torch.float64) * 2


@pytest.fixture
def w():
    return torch.randn(5, C, dtype=torch.float64)


@pytest.mark.parametrize("tau", [0.3, 1.0, 2.5])
def test_argmax_softmax_is_gradient_of_tempered_softmax(logits, w, tau):
    out, grad = _grad(gw.ops.argmax_onehot, logits, w, estimator="softmax", tau=tau)
    torch.testing.assert_close(out, torch.nn.functional.one_hot(logits.argmax(-1), C).double())
    torch.testing.assert_close(grad, _ref_softmax(logits, w, tau))


def test_st_is_identity(logits, w):
    for fn, kw in [
        (gw.ops.argmax_onehot, {}),
        (gw.ops.topk_mask, {"k": 3}),
        (gw.ops.sample_onehot, {"generator": torch.Generator().manual_seed(1)}),
        (gw.ops.gumbel_topk, {"k": 2, "generator": torch.Generator().manual_seed(1)}),
    ]:
        _, grad = _grad(fn, logits, w, estimator="st", **kw)
        torch.testing.assert_close(grad, w, rtol=0, atol=0)


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_argmax_reinmax_matches_algorithm(logits, w, tau):
    out, grad = _grad(gw.ops.argmax_onehot, logits, w, estimator="reinmax", tau=tau)
    torch.testing.assert_close(grad, _ref_reinmax(logits, out, w, tau))


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_topk_softmax_and_reinmax(logits, w, k, tau):
    out, grad = _grad(gw.ops.topk_mask, logits, w, k=k, estimator="softmax", tau=tau)
    expected = torch.zeros_like(logits).scatter(-1, logits.topk(k, -1).indices, 1.0)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grad, _ref_softmax(logits, w, tau, k=k))
    out, grad = _grad(gw.ops.topk_mask, logits, w, k=k, estimator="reinmax", tau=tau)
    torch.testing.assert_close(grad, _ref_reinmax(logits, out, w, tau, k=k))


@pytest.mark.parametrize("tau", [0.3, 1.0])
def test_sample_gumbel_uses_the_noise_of_the_sample(logits, w, tau):
    out, grad = _grad(
        gw.ops.sample_onehot, logits, w, estimator="gumbel", tau=tau, generator=torch.Generator().manual_seed(7)
    )
    noise = _noise_for(7, logits.shape)
    torch.testing.assert_close(out, torch.nn.functional.one_hot((logits + noise).argmax(-1), C).double())
    torch.testing.assert_close(grad, _ref_softmax(logits, w, tau, noise=noise))


def test_sample_softmax_and_reinmax(logits, w):
    out, grad = _grad(
        gw.ops.sample_onehot, logits, w, estimator="softmax", tau=0.7, generator=torch.Generator().manual_seed(3)
    )
    torch.testing.assert_close(grad, _ref_softmax(logits, w, 0.7))
    out, grad = _grad(
        gw.ops.sample_onehot, logits, w, estimator="reinmax", tau=1.5, generator=torch.Generator().manual_seed(3)
    )
    torch.testing.assert_close(grad, _ref_reinmax(logits, out, w, 1.5))


@pytest.mark.parametrize("k", [1, 3])
def test_gumbel_topk_gumbel_rule(logits, w, k):
    out, grad = _grad(
        gw.ops.gumbel_topk, logits, w, k=k, estimator="gumbel", tau=0.5, generator=torch.Generator().manual_seed(5)
    )
    noise = _noise_for(5, logits.shape)
    expected = torch.zeros_like(logits).scatter(-1, (logits + noise).topk(k, -1).indices, 1.0)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grad, _ref_softmax(logits, w, 0.5, k=k, noise=noise))


def test_gumbel_softmax_hard_gradient_is_soft_gradient(logits, w):
    """hard=True has the value of the one-hot and the gradient of the soft sample (PyTorch's
    y_hard - y_soft.detach() + y_soft), with the same noise for the same seed."""
    soft, soft_grad = _grad(gw.ops.gumbel_softmax, logits, w, tau=0.4, generator=torch.Generator().manual_seed(9))
    hard, hard_grad = _grad(
        gw.ops.gumbel_softmax, logits, w, tau=0.4, hard=True, generator=torch.Generator().manual_seed(9)
    )
    noise = _noise_for(9, logits.shape)
    torch.testing.assert_close(soft, torch.softmax((logits + noise) / 0.4, -1))
    torch.testing.assert_close(hard, torch.nn.functional.one_hot(soft.argmax(-1), C).double(), rtol=0, atol=0)
    torch.testing.assert_close(hard_grad, soft_grad)


@pytest.mark.parametrize("op", ["argmax_onehot", "sample_onehot", "gumbel_softmax"])
def test_tensor_tau_receives_the_surrogate_gradient(logits, w, op):
    tau = (torch.rand(5, 1, dtype=torch.float64) + 0.5).requires_grad_(True)
    leaf = logits.clone().requires_grad_(True)
    fn = getattr(gw.ops, op)
    kw = {} if op == "argmax_onehot" else {"generator": torch.Generator().manual_seed(2)}
    if op == "gumbel_softmax":
        kw["hard"] = True
    (fn(leaf, tau=tau, **kw) * w).sum().backward()
    ref_leaf = logits.clone().requires_grad_(True)
    ref_tau = tau.detach().clone().requires_grad_(True)
    z = ref_leaf if op == "argmax_onehot" else ref_leaf + _noise_for(2, logits.shape)
    (torch.softmax(z / ref_tau, -1) * w).sum().backward()
    torch.testing.assert_close(leaf.grad, ref_leaf.grad)
    torch.testing.assert_close(tau.grad, ref_tau.grad)


def test_scalar_tensor_tau(logits, w):
    tau = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    leaf = logits.clone().requires_grad_(True)
    (gw.ops.topk_mask(leaf, 2, tau=tau) * w).sum().backward()
    ref_tau = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    (2 * torch.softmax(logits / ref_tau, -1) * w).sum().backward()
    torch.testing.assert_close(tau.grad, ref_tau.grad)


def test_round_and_sign_ste():
    x = torch.tensor([-3.7, -1.0, -0.5, 0.0, 0.5, 1.5, 2.5, 9.0], dtype=torch.float64, requires_grad=True)
    w = torch.arange(1.0, 9.0, dtype=torch.float64)
    y = gw.ops.round_ste(x)
    torch.testing.assert_close(y, torch.round(x.detach()), rtol=0, atol=0)
    (y * w).sum().backward()
    torch.testing.assert_close(x.grad, w)
    x.grad = None
    y = gw.ops.round_ste(x, clip=(-1, 2))
    torch.testing.assert_close(
        y.detach(), torch.tensor([-1.0, -1.0, -0.0, 0.0, 0.0, 2.0, 2.0, 2.0], dtype=torch.float64)
    )
    (y * w).sum().backward()
    torch.testing.assert_close(x.grad, w * torch.tensor([0, 1, 1, 1, 1, 1, 0, 0.0], dtype=torch.float64))
    x.grad = None
    y = gw.ops.sign_ste(x, clip=1.0)
    torch.testing.assert_close(y.detach(), torch.sign(x.detach()))
    (y * w).sum().backward()
    torch.testing.assert_close(x.grad, w * torch.tensor([0, 1, 1, 1, 1, 0, 0, 0.0], dtype=torch.float64))
    x.grad = None
    gw.ops.sign_ste(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))


@pytest.mark.parametrize("k", [1, 2])
def test_gumbel_rao_averages_the_gumbel_rule_over_conditional_gumbels(logits, w, k):
    """Replays the generator: forward draws the sample's noise, backward draws K conditional
    Gumbels (their distribution is tested in test_sampling.py); the gradient is the mean of
    the gradients of k * softmax(z_i / tau) treating each z_i = logits + G_i with G_i fixed."""
    tau, K = 0.6, 3
    op = gw.ops.sample_onehot if k == 1 else lambda x, **kw: gw.ops.gumbel_topk(x, k, **kw)
    _, grad = _grad(
        op, logits, w, estimator="gumbel-rao", rao_samples=K, tau=tau, generator=torch.Generator().manual_seed(4)
    )
    g = torch.Generator().manual_seed(4)
    noise = _noise.gumbel(logits.shape, dtype=torch.float64, device="cpu", generator=g)
    expected = torch.zeros_like(logits)
    for _ in range(K):
        z = _noise.conditional_gumbel(logits, logits + noise, k, -1, generator=g)
        expected += _ref_softmax(logits, w, tau, k=k, noise=z - logits) / K
    torch.testing.assert_close(grad, expected)


def test_nan_propagates_through_sign_and_round():
    import numpy as np

    x = torch.tensor([float("nan"), -2.0, 0.0, 0.4, float("inf")], requires_grad=True)
    for op, ref in ((gw.ops.sign_ste, np.sign), (gw.ops.round_ste, np.round)):
        y = op(x)
        np.testing.assert_array_equal(y.detach().numpy(), ref(x.detach().numpy()))  # NaN where numpy has NaN
        (grad,) = torch.autograd.grad(y.sum(), x)
        assert torch.equal(grad, torch.ones(5))  # the identity surrogate, NaN input included
