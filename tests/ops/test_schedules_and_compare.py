import math

import pytest
import torch

import gradwise as gw


def test_exponential_tau_follows_jang_et_al():
    schedule = gw.ops.ExponentialTau(tau0=1.0, rate=1e-4, tau_min=0.5, every=500)
    for step in [0, 499, 500, 1234, 7000, 10_000]:
        expected = max(0.5, math.exp(-1e-4 * (step - step % 500)))
        assert schedule(step) == pytest.approx(expected, rel=1e-12)
    assert schedule(10**7) == 0.5


def test_linear_and_cosine_tau():
    lin = gw.ops.LinearTau(tau0=2.0, tau_min=1.0, steps=10)
    cos = gw.ops.CosineTau(tau0=2.0, tau_min=1.0, steps=10)
    for step in range(15):
        t = min(step, 10) / 10
        assert lin(step) == pytest.approx(2.0 - t, abs=1e-12)
        assert cos(step) == pytest.approx(1.0 + 0.5 * (1 + math.cos(math.pi * t)), abs=1e-12)
    assert [round(cos(s), 6) for s in (0, 5, 10)] == [2.0, 1.5, 1.0]


def test_estimator_switch_drives_an_op():
    schedule = gw.ops.EstimatorSwitch(at=3, before="gumbel", after="st")
    logits = torch.randn(4, 5, requires_grad=True)
    grads = []
    for step in range(5):
        y = gw.ops.sample_onehot(logits, estimator=schedule(step), generator=torch.Generator().manual_seed(0))
        (grad,) = torch.autograd.grad((y * torch.arange(5.0)).sum(), logits)
        grads.append(grad)
    assert [schedule(s) for s in range(5)] == ["gumbel"] * 3 + ["st"] * 2
    torch.testing.assert_close(grads[4], torch.arange(5.0).expand(4, 5))  # straight-through: identity
    assert not torch.allclose(grads[0], grads[4])


def test_schedule_repr_reproduces_constructor():
    s = gw.ops.CosineTau(tau0=2.0, tau_min=0.5, steps=100)
    assert eval(repr(s), {"CosineTau": gw.ops.CosineTau}) == s


def test_compare_estimators_exact_gradient_by_hand():
    """One variable, f(D) = <D, c>: E[f] = <softmax(theta), c>, whose gradient is
    p * (c - <p, c>) (hand-derived)."""
    theta = torch.tensor([0.2, -0.4, 1.0], dtype=torch.float64)
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    result = gw.ops.compare_estimators(lambda d: (d * c).sum(), theta, ["softmax", "st"], n_samples=50)
    p = torch.softmax(theta, -1)
    torch.testing.assert_close(result.exact, p * (c - (p * c).sum()))
    # for a linear f, straight-through softmax is exact and has no variance
    assert result.stats["softmax"].bias < 1e-12 and result.stats["softmax"].std < 1e-12
    assert result.stats["softmax"].cosine == pytest.approx(1.0)
    assert "softmax" in str(result) and "bias" in str(result)


def test_compare_estimators_two_variables_against_a_loop():
    theta = torch.tensor([[0.3, -0.2], [1.0, 0.1]], dtype=torch.float64)

    def f(d):
        return (d[0, 0] * d[1, 1]) * 3.0 + d[1, 0] ** 2

    result = gw.ops.compare_estimators(f, theta, ["gumbel"], n_samples=20, generator=torch.Generator().manual_seed(0))
    # reference: a loop over the four outcomes
    leaf = theta.clone().requires_grad_(True)
    p = torch.softmax(leaf, -1)
    total = 0.0
    for i in range(2):
        for j in range(2):
            d = torch.zeros(2, 2, dtype=torch.float64)
            d[0, i] = d[1, j] = 1
            total = total + p[0, i] * p[1, j] * f(d)
    (expected,) = torch.autograd.grad(total, leaf)
    torch.testing.assert_close(result.exact, expected)


def test_reinmax_is_less_biased_than_straight_through():
    """The ReinMax paper's claim on a quadratic: second-order accuracy shows as lower bias."""
    target = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]], dtype=torch.float64)
    theta = torch.tensor([[0.5, -0.5, 0.0], [0.0, 1.0, -1.0]], dtype=torch.float64)
    result = gw.ops.compare_estimators(
        lambda d: ((d - target) ** 2).sum(),
        theta,
        ["st", "softmax", "reinmax"],
        n_samples=4000,
        generator=torch.Generator().manual_seed(0),
    )
    assert result.stats["reinmax"].bias < result.stats["softmax"].bias
    assert result.stats["reinmax"].bias < result.stats["st"].bias
    assert result.stats["reinmax"].relative_bias < 0.1
