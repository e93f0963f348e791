"""gradwise._loss_input: the one loss-input check, on each case and on the false alarms it must avoid."""

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradwise._loss_input import LossInputProblem, check_loss_input


def _kind(loss, inp, target=None):
    problem = check_loss_input(loss, inp, target)
    return None if problem is None else problem.kind


@pytest.fixture
def logits():
    return torch.randn(16, 5) * 3


@pytest.fixture
def labels():
    return torch.randint(0, 5, (16,))


def test_each_problem_is_found(logits, labels):
    assert _kind(F.cross_entropy, logits.softmax(-1), labels) == "probabilities-into-cross-entropy"
    assert _kind(nn.CrossEntropyLoss(), logits.softmax(-1), labels) == "probabilities-into-cross-entropy"
    assert _kind(F.cross_entropy, logits.log_softmax(-1), labels) == "log-probabilities-into-cross-entropy"
    assert _kind(F.nll_loss, logits, labels) == "logits-into-nll-loss"
    assert _kind(nn.NLLLoss(), logits.softmax(-1), labels) == "probabilities-into-nll-loss"
    assert _kind(F.binary_cross_entropy_with_logits, torch.sigmoid(logits), (logits > 0).float()) == (
        "probabilities-into-bce-with-logits"
    )
    assert _kind(nn.BCELoss(), logits, (logits > 0).float()) == "logits-into-bce"
    assert _kind(F.mse_loss, logits.argmax(-1).float(), labels.float()) == "class-indices-into-regression"
    assert _kind(nn.L1Loss(), logits.argmax(-1), labels.float()) == "class-indices-into-regression"


def test_problem_is_structured(logits, labels):
    problem = check_loss_input(F.cross_entropy, logits.softmax(-1), labels)
    assert isinstance(problem, LossInputProblem) and problem.severity == "error" and problem.loss == "cross_entropy"
    assert "log_softmax" in problem.message and "logits" in problem.fix
    with pytest.raises(AttributeError):
        problem.kind = "other"  # frozen
    assert check_loss_input(F.cross_entropy, logits.log_softmax(-1), labels).severity == "warning"


def test_no_false_alarms(logits, labels):
    assert _kind(F.cross_entropy, logits, labels) is None
    assert _kind(F.cross_entropy, -logits.abs() - 1, labels) is None  # all negative, not log-probabilities
    assert _kind(F.cross_entropy, torch.randn(1, 3), torch.tensor([0])) is None  # a tiny batch
    assert _kind(nn.CrossEntropyLoss(label_smoothing=0.2), logits, labels) is None
    assert _kind(F.nll_loss, logits.log_softmax(-1), labels) is None
    assert _kind(F.nll_loss, torch.randn(1, 4).log_softmax(-1), torch.tensor([1])) is None
    assert _kind(F.binary_cross_entropy_with_logits, logits, (logits > 0).float()) is None
    assert _kind(F.binary_cross_entropy_with_logits, torch.rand(3), torch.ones(3)) is None  # too few to tell
    assert _kind(F.binary_cross_entropy, torch.sigmoid(logits), (logits > 0).float()) is None
    rounded = logits.clone().requires_grad_().round()  # round_ste-like output with a gradient path is fine
    assert _kind(F.mse_loss, rounded * 1.0 + torch.zeros_like(rounded).requires_grad_(), logits) is None
    assert _kind(F.mse_loss, logits, logits) is None
    assert _kind(lambda a, b: (a - b).sum(), logits.softmax(-1), labels) is None  # unknown losses: not checked
    assert _kind(F.cross_entropy, torch.full((4, 3), float("nan")), torch.zeros(4, dtype=torch.long)) is None


def test_ignore_index_rows_are_left_out(labels):
    # ignored positions hold padding garbage (here: huge scores); the other rows are log-probabilities
    scores = torch.randn(16, 5).log_softmax(-1)
    target = labels.clone()
    target[:4] = -100
    scores[:4] = 50.0
    assert _kind(F.nll_loss, scores, target) is None
    assert _kind(functools.partial(F.nll_loss, ignore_index=3), scores, torch.where(target < 0, 3, target)) is None
    assert _kind(nn.NLLLoss(ignore_index=0), scores, torch.where(target < 0, 0, target)) is None
    all_ignored = torch.full((16,), -100)
    assert _kind(F.nll_loss, torch.randn(16, 5), all_ignored) is None


def test_sequence_layout_class_dim_is_one():
    logp = torch.randn(2, 4, 7).log_softmax(1)  # (N, C, T)
    assert _kind(F.nll_loss, logp, torch.randint(0, 4, (2, 7))) is None
    assert _kind(F.nll_loss, logp.exp(), torch.randint(0, 4, (2, 7))) == "probabilities-into-nll-loss"
