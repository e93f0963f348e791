"""Error messages are part of the API: they name the function, the argument, what was
expected and what was received."""

import re

import pytest
import torch

import gradwise as gw
from gradwise.errors import ArgumentError, ArgumentTypeError, GradwiseError

X = torch.randn(3, 4)


def raises(exc, *fragments):
    pattern = ".*".join(re.escape(f) for f in fragments)
    return pytest.raises(exc, match=re.compile(pattern, re.S))


def test_unknown_estimator_lists_the_registry():
    with raises(ArgumentError, "argmax_onehot: estimator must be one of", "'st', 'softmax'", "(got 'straight')"):
        gw.ops.argmax_onehot(X, estimator="straight")
    with pytest.raises(ArgumentError) as info:
        gw.ops.sample_onehot(X, estimator="nope")
    for name in gw.ops.ESTIMATORS:  # derived from the registry, not written by hand
        assert repr(name) in str(info.value)


@pytest.mark.parametrize("estimator", ["gumbel", "gumbel-rao"])
def test_sampling_estimator_on_deterministic_op(estimator):
    with raises(
        ArgumentError, "topk_mask: estimator must be one of 'st', 'softmax', 'reinmax'", "needs a sampled output"
    ):
        gw.ops.topk_mask(X, 2, estimator=estimator)


@pytest.mark.parametrize("tau", [0, 0.0, -1.0, float("nan"), float("inf")])
def test_bad_tau(tau):
    with raises(ArgumentError, "gumbel_softmax: tau must be"):
        gw.ops.gumbel_softmax(X, tau=tau)


def test_tau_zero_message():
    with raises(ArgumentError, "gumbel_softmax: tau must be > 0 (got 0.0)"):
        gw.ops.gumbel_softmax(X, tau=0.0, hard=False)


def test_tau_tensor_checks():
    with raises(ArgumentError, "argmax_onehot: tau must be > 0 everywhere (got an entry equal to -1.0)"):
        gw.ops.argmax_onehot(X, tau=torch.tensor([[1.0], [-1.0], [2.0]]))
    with raises(ArgumentError, "sample_onehot: tau must be finite everywhere (got an entry equal to inf)"):
        gw.ops.sample_onehot(X, tau=torch.tensor([[1.0], [float("inf")], [2.0]]))  # as a float inf is refused
    with raises(ArgumentError, "argmax_onehot: tau must be > 0 everywhere (got an entry equal to nan)"):
        gw.ops.argmax_onehot(X, tau=torch.tensor(float("nan")))
    with raises(ArgumentError, "tau must broadcast to the input's shape with size 1 along dim=1", "tau.unsqueeze(1)"):
        gw.ops.argmax_onehot(X, tau=torch.ones(3))  # one per row, but not unsqueezed
    with raises(ArgumentTypeError, "tau must be a float or a floating tensor (got torch.int64)"):
        gw.ops.argmax_onehot(X, tau=torch.ones(3, 1, dtype=torch.long))
    with raises(ArgumentTypeError, "sample_onehot: tau must be a real number (got str"):
        gw.ops.sample_onehot(X, tau="1.0")


def test_logits_type_dtype_and_shape():
    with raises(ArgumentTypeError, "argmax_onehot: logits must be a torch.Tensor of floating dtype (got list"):
        gw.ops.argmax_onehot([[1.0, 2.0]])
    with raises(ArgumentTypeError, "sample_onehot: logits must have a floating dtype", "(got torch.int64)"):
        gw.ops.sample_onehot(torch.tensor([1, 2, 3]))
    with raises(ArgumentError, "gumbel_topk: logits must have at least 1 dimension"):
        gw.ops.gumbel_topk(torch.tensor(1.0), 1)
    with raises(ArgumentError, "topk_mask: scores has size 0 along dim=1", "no class to choose"):
        gw.ops.topk_mask(torch.zeros(3, 0), 1)
    with raises(ArgumentTypeError, "round_ste: x must have a floating dtype"):
        gw.ops.round_ste(torch.tensor([1, 2]))


def test_dim_and_k():
    with raises(ArgumentError, "argmax_onehot: dim must be in [-2, 1] for a 2-d tensor (got 2)"):
        gw.ops.argmax_onehot(X, dim=2)
    with raises(ArgumentTypeError, "argmax_onehot: dim must be an int (got float"):
        gw.ops.argmax_onehot(X, dim=1.0)
    with raises(ArgumentError, "topk_mask: k must be in [1, 4] (got 5)"):
        gw.ops.topk_mask(X, 5)
    with raises(ArgumentError, "gumbel_topk: k must be in [1, 4] (got 0)"):
        gw.ops.gumbel_topk(X, 0)
    with raises(ArgumentTypeError, "topk_mask: k must be an int (got bool"):
        gw.ops.topk_mask(X, True)


def test_generator_and_rao_samples():
    with raises(ArgumentTypeError, "sample_onehot: generator must be a torch.Generator or None (got int"):
        gw.ops.sample_onehot(X, generator=0)
    with raises(ArgumentError, "sample_onehot: rao_samples applies only to estimator='gumbel-rao'"):
        gw.ops.sample_onehot(X, rao_samples=5)
    with raises(ArgumentError, "sample_onehot: rao_samples must be >= 1 (got 0)"):
        gw.ops.sample_onehot(X, estimator="gumbel-rao", rao_samples=0)


def test_clip_and_hard():
    with raises(ArgumentError, "round_ste: clip must have lo < hi (got (2.0, 1.0))"):
        gw.ops.round_ste(X, clip=(2, 1))
    with raises(ArgumentTypeError, "round_ste: clip must be None or a pair (lo, hi) (got 1.0)"):
        gw.ops.round_ste(X, clip=1.0)
    with raises(ArgumentError, "sign_ste: clip must be > 0 (got -1.0)"):
        gw.ops.sign_ste(X, clip=-1.0)
    with raises(ArgumentTypeError, "gumbel_softmax: hard must be a bool (got int: 1)"):
        gw.ops.gumbel_softmax(X, hard=1)


def test_every_error_is_a_gradwise_error_and_a_builtin():
    with pytest.raises(GradwiseError):
        gw.ops.topk_mask(X, 9)
    with pytest.raises(ValueError):
        gw.ops.topk_mask(X, 9)
    with pytest.raises(TypeError):
        gw.ops.topk_mask(X, "2")


def test_schedule_errors():
    with raises(ArgumentError, "ExponentialTau: tau0 must be > 0 (got 0.0)"):
        gw.ops.ExponentialTau(tau0=0.0)
    with raises(ArgumentError, "ExponentialTau: tau_min must be <= tau0"):
        gw.ops.ExponentialTau(tau0=0.5, tau_min=1.0)
    with raises(ArgumentError, "CosineTau: steps must be >= 1 (got 0)"):
        gw.ops.CosineTau(1.0, 0.5, 0)
    with raises(ArgumentError, "EstimatorSwitch: after must be one of", "(got 'hard')"):
        gw.ops.EstimatorSwitch(at=10, after="hard")
    with raises(ArgumentError, "LinearTau: step must be >= 0 (got -1)"):
        gw.ops.LinearTau(1.0, 0.5, 10)(-1)


def test_compare_estimators_refuses_large_enumerations():
    with raises(ArgumentError, "compare_estimators: enumerating E[f(D)] needs C ** N = 10 ** 6 = 1000000 outcomes"):
        gw.ops.compare_estimators(lambda d: d.sum(), torch.zeros(6, 10), ["st"])
    with raises(ArgumentTypeError, "compare_estimators: estimators must be a list of names", "pass ['st']"):
        gw.ops.compare_estimators(lambda d: d.sum(), torch.zeros(3), "st")
    with raises(ArgumentError, "compare_estimators: f must return a scalar tensor"):
        gw.ops.compare_estimators(lambda d: d, torch.zeros(3), ["st"])
