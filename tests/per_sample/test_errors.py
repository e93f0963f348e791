"""Bad inputs give clear errors, before any work."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradwise.per_sample as ps
from gradwise.errors import ArgumentError, ArgumentTypeError, UnsupportedError

FUNCS = [ps.grads, ps.norms, lambda *a: ps.clip_and_accumulate(*a, max_norm=1.0)]


@pytest.mark.parametrize("fn", FUNCS)
def test_mismatched_batch(fn):
    with pytest.raises(ArgumentError, match=r"inputs and targets must have the same batch size") as info:
        fn(nn.Linear(3, 2), F.cross_entropy, torch.randn(4, 3), torch.zeros(5, dtype=torch.long))
    assert "inputs:  (4, 3)" in str(info.value) and "targets: (5,)" in str(info.value)


@pytest.mark.parametrize("fn", FUNCS)
def test_empty_batch(fn):
    with pytest.raises(ArgumentError, match=r"the batch is empty"):
        fn(nn.Linear(3, 2), F.cross_entropy, torch.randn(0, 3), torch.zeros(0, dtype=torch.long))


@pytest.mark.parametrize("fn", FUNCS)
def test_no_trainable_parameters(fn):
    model = nn.Linear(3, 2).requires_grad_(False)
    with pytest.raises(ArgumentError, match=r"model has no trainable parameters"):
        fn(model, F.cross_entropy, torch.randn(4, 3), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("fn", FUNCS)
def test_loss_without_one_value_per_sample(fn):
    with pytest.raises(ArgumentError, match=r"loss_fn must return one loss per sample, shape \([24],\)"):
        fn(nn.Linear(3, 2), lambda out, y: F.cross_entropy(out, y), torch.randn(4, 3), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("fn", FUNCS)
def test_batchnorm_in_training_mode(fn):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    with pytest.raises(UnsupportedError, match=r"1 \(BatchNorm1d\) normalises with the statistics of the whole batch"):
        fn(model, F.cross_entropy, torch.randn(4, 3), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("fn", FUNCS)
def test_wrong_loss_input_is_refused_unless_told(fn):
    model = nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=-1))
    x, y = torch.randn(6, 3), torch.randint(0, 4, (6,))
    with pytest.raises(ArgumentError, match=r"\[probabilities-into-cross-entropy\]") as info:
        fn(model, F.cross_entropy, x, y)
    assert "check_loss=False" in str(info.value) and "Fix:" in str(info.value)
    kwargs = {"check_loss": False}
    if fn is FUNCS[2]:
        ps.clip_and_accumulate(model, F.cross_entropy, x, y, 1.0, **kwargs)
    else:
        assert fn(model, F.cross_entropy, x, y, **kwargs) is not None


def test_logits_into_nll_loss_is_refused():
    with pytest.raises(ArgumentError, match=r"\[logits-into-nll-loss\]"):
        ps.norms(nn.Linear(3, 4), F.nll_loss, torch.randn(6, 3), torch.randint(0, 4, (6,)))


def test_argument_types():
    with pytest.raises(ArgumentTypeError, match=r"per_sample.norms: model must be a torch.nn.Module"):
        ps.norms(lambda x: x, F.cross_entropy, torch.randn(2, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ArgumentTypeError, match=r"per_sample.grads: inputs must be a torch.Tensor"):
        ps.grads(nn.Linear(3, 2), F.cross_entropy, [[1.0, 2.0, 3.0]], torch.zeros(1, dtype=torch.long))
    with pytest.raises(ArgumentError, match=r"params must name trainable parameters"):
        ps.grads(nn.Linear(3, 2), F.cross_entropy, torch.randn(2, 3), torch.zeros(2, dtype=torch.long), params=["w"])
    with pytest.raises(ArgumentError, match=r"max_norm must be > 0 \(got 0.0\)"):
        ps.clip_and_accumulate(
            nn.Linear(3, 2), F.cross_entropy, torch.randn(2, 3), torch.zeros(2, dtype=torch.long), 0.0
        )
