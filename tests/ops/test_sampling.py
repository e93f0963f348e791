"""Sampling ops draw from the right distribution, reproducibly, and never make NaN or Inf."""

import itertools
import math

import pytest
import torch

import gradwise as gw
from gradwise.ops import _noise

ALPHA = 1e-3  # significance of the chi-square goodness-of-fit tests (fixed seeds)
EULER_GAMMA = 0.5772156649015329


def chi_square_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    counts, probs = counts.double(), probs.double()
    expected = counts.sum() * probs
    stat = ((counts - expected) ** 2 / expected).sum()
    df = counts.numel() - 1
    return torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat / 2).item()


def test_chi_square_helper_rejects_a_wrong_distribution():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([0.0, 1.0, 2.0, -1.0])
    counts = torch.stack([gw.ops.sample_onehot(logits, generator=g) for _ in range(5000)]).sum(0)
    assert chi_square_pvalue(counts, torch.softmax(logits / 2, -1)) < ALPHA


@pytest.mark.parametrize("op", ["sample_onehot", "gumbel_softmax_hard", "gumbel_topk_k1"])
def test_one_hot_samples_follow_the_softmax(op):
    logits = torch.tensor([1.0, -0.5, 2.0, 0.0, -3.0])
    n = 40_000
    batch = logits.expand(n, -1)
    g = torch.Generator().manual_seed(123)
    if op == "sample_onehot":
        samples = gw.ops.sample_onehot(batch, generator=g)
    elif op == "gumbel_softmax_hard":
        samples = gw.ops.gumbel_softmax(batch, hard=True, generator=g)
    else:
        samples = gw.ops.gumbel_topk(batch, 1, generator=g)
    assert torch.equal(samples.sum(-1), torch.ones(n))
    assert chi_square_pvalue(samples.sum(0), torch.softmax(logits, -1)) > ALPHA


def test_gumbel_topk_follows_sampling_without_replacement():
    logits = torch.tensor([0.5, -1.0, 1.5, 0.0])
    p = torch.softmax(logits, -1).double()
    sets = list(itertools.combinations(range(4), 2))
    # P({i, j}) = p_i p_j / (1 - p_i) + p_j p_i / (1 - p_j): first i then j, or first j then i
    probs = torch.stack([p[i] * p[j] / (1 - p[i]) + p[j] * p[i] / (1 - p[j]) for i, j in sets])
    n = 40_000
    samples = gw.ops.gumbel_topk(logits.expand(n, -1), 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(samples.sum(-1), torch.full((n,), 2.0))
    index = {s: t for t, s in enumerate(sets)}
    chosen = samples.nonzero()[:, 1].reshape(n, 2)
    counts = torch.bincount(torch.tensor([index[tuple(r)] for r in chosen.tolist()]), minlength=len(sets))
    assert chi_square_pvalue(counts, probs) > ALPHA


def test_soft_gumbel_softmax_matches_pytorch_in_distribution():
    """Same expectation of the relaxed sample as torch.nn.functional.gumbel_softmax
    (different noise streams: compared within 5 standard errors)."""
    logits = torch.tensor([1.0, 0.0, -1.0, 0.5], dtype=torch.float64)
    n = 40_000
    ours = gw.ops.gumbel_softmax(logits.expand(n, -1), tau=0.7, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)
    theirs = torch.nn.functional.gumbel_softmax(logits.expand(n, -1), tau=0.7)
    se = (ours.var(0) / n + theirs.var(0) / n).sqrt()
    assert ((ours.mean(0) - theirs.mean(0)).abs() < 5 * se).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_noise_is_finite_at_the_ends_of_the_grid(dtype):
    bits = torch.tensor([0, 1, 2**22, 2**23 - 2, 2**23 - 1])
    e = _noise.exponential_from_bits(bits, dtype)
    assert (e > 0).all() and torch.isfinite(e).all()
    gumbel = -torch.log(e)
    assert torch.isfinite(gumbel).all()
    assert gumbel.max() < 17 and gumbel.min() > -3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_no_nan_or_inf_from_samples_and_gradients(dtype):
    logits = (torch.randn(20_000, 6) * 3).to(dtype)
    logits[:, 0] = float("-inf")
    for estimator in gw.ops.ESTIMATORS:
        leaf = logits.clone().requires_grad_(True)
        y = gw.ops.sample_onehot(leaf, estimator=estimator, tau=0.3)
        (y * torch.randn_like(y)).sum().backward()
        assert torch.isfinite(leaf.grad).all(), estimator
        assert y[:, 0].sum() == 0, "a -inf class was sampled"
    soft = gw.ops.gumbel_softmax(logits, tau=0.1)
    assert torch.isfinite(soft).all() and soft.dtype == dtype


@pytest.mark.parametrize(
    "op",
    [
        lambda x, **kw: gw.ops.argmax_onehot(x, **kw),
        lambda x, **kw: gw.ops.sample_onehot(x, **kw),
        lambda x, **kw: gw.ops.topk_mask(x, 2, **kw),
        lambda x, **kw: gw.ops.gumbel_topk(x, 2, **kw),
    ],
)
@pytest.mark.parametrize("estimator", ["st", "softmax", "reinmax"])
def test_all_neg_inf_row_gives_zeros_and_no_gradient(op, estimator):
    logits = torch.randn(3, 5)
    logits[1] = float("-inf")
    logits[2, :3] = float("-inf")  # fewer finite classes than k is fine, and 2 are left
    leaf = logits.clone().requires_grad_(True)
    y = op(leaf, estimator=estimator)
    assert torch.equal(y[1], torch.zeros(5))
    assert y[2, :3].sum() == 0
    (y * torch.randn_like(y)).sum().backward()
    assert torch.isfinite(leaf.grad).all()
    assert torch.equal(leaf.grad[1], torch.zeros(5))
    soft = gw.ops.gumbel_softmax(logits)
    assert torch.equal(soft[1], torch.zeros(5)) and torch.isfinite(soft).all()


@pytest.mark.parametrize(
    "call",
    [
        lambda x, g: gw.ops.sample_onehot(x, generator=g),
        lambda x, g: gw.ops.gumbel_topk(x, 3, generator=g),
        lambda x, g: gw.ops.gumbel_softmax(x, 0.5, generator=g),
        lambda x, g: gw.ops.gumbel_softmax(x, 0.5, hard=True, generator=g),
    ],
)
def test_same_seed_gives_bit_identical_samples(call):
    x = torch.randn(64, 10)
    a = call(x, torch.Generator().manual_seed(42))
    b = call(x, torch.Generator().manual_seed(42))
    c = call(x, torch.Generator().manual_seed(43))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# Gumbel-Rao


@pytest.mark.parametrize("k", [1, 3])
def test_conditional_gumbels_keep_the_sample_and_have_gumbel_marginals(k):
    """Conditioned on the sample, then averaged over samples, the perturbed logits are
    unconditional Gumbels: mean logit + Euler's gamma, variance pi^2 / 6 (hand-derived)."""
    logits = torch.tensor([1.0, -0.5, 0.3, 0.0, -2.0], dtype=torch.float64)
    n = 50_000
    theta = logits.expand(n, -1)
    g = torch.Generator().manual_seed(3)
    perturbed = theta + _noise.gumbel(theta.shape, dtype=torch.float64, device="cpu", generator=g)
    z = _noise.conditional_gumbel(theta, perturbed, k, -1, generator=g)
    assert torch.equal(z.topk(k, -1).indices, perturbed.topk(k, -1).indices)
    se_mean = math.pi / math.sqrt(6 * n)
    assert ((z.mean(0) - (logits + EULER_GAMMA)).abs() < 5 * se_mean).all()
    assert ((z.var(0) - math.pi**2 / 6).abs() < 0.05 * math.pi**2 / 6).all()


def test_gumbel_rao_has_the_expectation_of_gumbel_and_less_variance():
    """Rao-Blackwellisation keeps the expected gradient of straight-through Gumbel-softmax
    and lowers its variance (Paulus et al. 2021)."""
    logits = torch.tensor([0.5, -0.3, 1.0, 0.0], dtype=torch.float64)
    w = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    n = 20_000
    grads = {}
    for estimator, kw in [("gumbel", {}), ("gumbel-rao", {"rao_samples": 8})]:
        leaf = logits.expand(n, -1).clone().requires_grad_(True)
        y = gw.ops.sample_onehot(leaf, estimator=estimator, tau=0.5, generator=torch.Generator().manual_seed(11), **kw)
        (y * w).sum().backward()
        grads[estimator] = leaf.grad
    a, b = grads["gumbel"], grads["gumbel-rao"]
    se = (a.var(0) / n + b.var(0) / n).sqrt()
    assert ((a.mean(0) - b.mean(0)).abs() < 5 * se).all()
    assert (b.var(0) < a.var(0)).all()


def test_gumbel_rao_is_reproducible_with_a_generator():
    logits = torch.randn(8, 5)
    grads = []
    for _ in range(2):
        leaf = logits.clone().requires_grad_(True)
        y = gw.ops.gumbel_topk(
            leaf, 2, estimator="gumbel-rao", rao_samples=3, generator=torch.Generator().manual_seed(0)
        )
        (y * torch.arange(5.0)).sum().backward()
        grads.append(leaf.grad)
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("estimator", ["st", "softmax", "reinmax", "gumbel"])
def test_nan_logits_propagate_to_their_row_only(estimator):
    """A NaN is never hidden: the row holding it gets NaN in its output and gradient."""
    logits = torch.randn(3, 5)
    logits[1, 2] = float("nan")
    leaf = logits.clone().requires_grad_(True)
    y = gw.ops.sample_onehot(leaf, estimator=estimator)
    assert torch.isnan(y[1]).any()
    assert torch.isfinite(y[0]).all() and torch.isfinite(y[2]).all()
    (y * torch.randn_like(y)).sum().backward()
    assert torch.isfinite(leaf.grad[0]).all() and torch.isfinite(leaf.grad[2]).all()
    if estimator != "st":
        assert torch.isnan(leaf.grad[1]).any()
    soft = gw.ops.gumbel_softmax(logits)
    assert torch.isnan(soft[1]).all() and torch.isfinite(soft[[0, 2]]).all()


def test_gumbel_softmax_takes_pytorchs_signature():
    import inspect

    ours = inspect.signature(gw.ops.gumbel_softmax).parameters
    theirs = inspect.signature(torch.nn.functional.gumbel_softmax).parameters
    assert list(ours)[: len(theirs)] == list(theirs)  # the same names in the same order, then generator=
    assert [ours[n].default for n in theirs] == [theirs[n].default for n in theirs]
    logits = torch.randn(5, 7)
    hard = gw.ops.gumbel_softmax(logits, 2.0, True, generator=torch.Generator().manual_seed(0))  # hard positional
    assert torch.equal(hard.sum(-1), torch.ones(5)) and set(hard.unique().tolist()) == {0.0, 1.0}
    same = gw.ops.gumbel_softmax(logits, 2.0, True, 1e-10, -1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(hard, same)


def test_gumbel_softmax_eps_is_ignored_with_pytorchs_warning():
    logits = torch.randn(4, 3)
    with pytest.warns(UserWarning, match="`eps` parameter is deprecated and has no effect") as record:
        a = gw.ops.gumbel_softmax(logits, 1.0, False, 1e-5, generator=torch.Generator().manual_seed(3))
    assert record[0].filename == __file__  # pointed at the caller
    with pytest.warns(UserWarning, match="`eps` parameter is deprecated"):
        torch.nn.functional.gumbel_softmax(logits, 1.0, False, 1e-5)  # PyTorch warns the same
    b = gw.ops.gumbel_softmax(logits, 1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(gw.errors.ArgumentTypeError, match="gumbel_softmax: eps must be a number"):
        gw.ops.gumbel_softmax(logits, 1.0, False, "small")


@pytest.mark.parametrize("hard", [False, True])
def test_gumbel_softmax_of_a_0d_tensor_is_pytorchs(hard):
    x = torch.tensor(2.0, requires_grad=True)
    y = gw.ops.gumbel_softmax(x, 0.5, hard)
    ref_x = torch.tensor(2.0, requires_grad=True)
    ref = torch.nn.functional.gumbel_softmax(ref_x, 0.5, hard)
    assert y.shape == ref.shape == () and y.item() == ref.item() == 1.0
    y.backward()
    ref.backward()
    assert x.grad.item() == ref_x.grad.item() == 0.0
    with pytest.raises(gw.errors.ArgumentError, match="dim must be -1 or 0 for a 0-d logits"):
        gw.ops.gumbel_softmax(torch.tensor(1.0), dim=1)
