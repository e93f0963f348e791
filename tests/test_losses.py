"""gradwise._losses: the one loss-input check, from provenance first; the value range is a
hint that never makes an error alone; and the forms that the provenance gives."""

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradwise._losses import (
    BINARY_PROBABILITIES,
    INDICES,
    LOG_PROBABILITIES,
    PROBABILITIES,
    SCORES,
    LossInputProblem,
    check_loss_input,
    track_forms,
)


def _problem(loss, inp, target=None, form=None):
    problem = check_loss_input(loss, inp, target, form=form)
    return None if problem is None else (problem.kind, problem.severity)


@pytest.fixture
def logits():
    return torch.randn(16, 5) * 3


@pytest.fixture
def labels():
    return torch.randint(0, 5, (16,))


def test_each_problem_is_an_error_when_the_provenance_shows_it(logits, labels):
    probs, binary = logits.softmax(-1), (logits > 0).float()
    error = "error"
    assert _problem(F.cross_entropy, probs, labels, PROBABILITIES) == ("probabilities-into-cross-entropy", error)
    assert _problem(nn.CrossEntropyLoss(), probs, labels, PROBABILITIES)[0] == "probabilities-into-cross-entropy"
    assert _problem(F.nll_loss, logits, labels, SCORES) == ("logits-into-nll-loss", error)
    assert _problem(nn.NLLLoss(), probs, labels, PROBABILITIES) == ("probabilities-into-nll-loss", error)
    sig = torch.sigmoid(logits)
    assert _problem(F.binary_cross_entropy_with_logits, sig, binary, BINARY_PROBABILITIES) == (
        "probabilities-into-bce-with-logits",
        error,
    )
    assert _problem(F.kl_div, probs, probs, PROBABILITIES) == ("probabilities-into-kl-div", error)
    assert _problem(F.mse_loss, logits.argmax(-1).float(), labels.float(), INDICES) == (
        "class-indices-into-regression",
        error,
    )
    # certain from the values alone: PyTorch itself raises right after
    assert _problem(nn.BCELoss(), logits, binary) == ("logits-into-bce", error)
    assert _problem(nn.L1Loss(), logits.argmax(-1), labels.float()) == ("class-indices-into-regression", error)


def test_log_softmax_into_cross_entropy_is_a_harmless_warning(logits, labels):
    problem = check_loss_input(F.cross_entropy, logits.log_softmax(-1), labels, form=LOG_PROBABILITIES)
    assert (problem.kind, problem.severity) == ("log-probabilities-into-cross-entropy", "warning")
    assert "redundant, harmless" in problem.message and "nll_loss" in problem.fix
    # and it is the truth: the same loss and the same gradient
    x = logits.clone().requires_grad_()
    once = F.cross_entropy(x, labels)
    (g_once,) = torch.autograd.grad(once, x)
    twice = F.cross_entropy(x.log_softmax(-1), labels)
    (g_twice,) = torch.autograd.grad(twice, x)
    torch.testing.assert_close(once, twice)
    torch.testing.assert_close(g_once, g_twice)


def test_values_alone_are_at_most_a_warning(logits, labels):
    probs = logits.softmax(-1)
    assert _problem(F.cross_entropy, probs, labels) == ("probabilities-into-cross-entropy", "warning")
    assert _problem(F.cross_entropy, logits.log_softmax(-1), labels) == (
        "log-probabilities-into-cross-entropy",
        "warning",
    )
    assert _problem(F.nll_loss, logits, labels) == ("logits-into-nll-loss", "warning")
    assert _problem(nn.NLLLoss(), probs, labels) == ("probabilities-into-nll-loss", "warning")
    # raw logits near 0 land in [0, 1]: values there say nothing for BCE-with-logits
    small = torch.rand(64, 1) * 0.1
    assert _problem(F.binary_cross_entropy_with_logits, small, torch.ones(64, 1)) is None
    assert _problem(F.binary_cross_entropy_with_logits, small, torch.ones(64, 1), SCORES) is None
    # whole numbers without a gradient are not class indices unless they came from argmax
    assert _problem(F.mse_loss, logits.round(), logits) is None


def test_problem_is_structured(logits, labels):
    problem = check_loss_input(F.cross_entropy, logits.softmax(-1), labels, form=PROBABILITIES)
    assert isinstance(problem, LossInputProblem) and problem.severity == "error" and problem.loss == "cross_entropy"
    assert "log_softmax" in problem.message and "logits" in problem.fix
    with pytest.raises(AttributeError):
        problem.kind = "other"  # frozen


def test_no_false_alarms(logits, labels):
    assert _problem(F.cross_entropy, logits, labels, SCORES) is None
    assert _problem(F.cross_entropy, logits, labels) is None
    assert _problem(F.cross_entropy, -logits.abs() - 1, labels) is None  # all negative, not log-probabilities
    assert _problem(F.cross_entropy, torch.randn(1, 3), torch.tensor([0])) is None  # a tiny batch
    assert _problem(nn.CrossEntropyLoss(label_smoothing=0.2), logits, labels) is None
    assert _problem(F.nll_loss, logits.log_softmax(-1), labels, LOG_PROBABILITIES) is None
    assert _problem(F.nll_loss, logits.log_softmax(-1), labels) is None
    assert _problem(F.nll_loss, torch.randn(1, 4).log_softmax(-1), torch.tensor([1])) is None
    assert _problem(F.binary_cross_entropy_with_logits, logits, (logits > 0).float(), SCORES) is None
    assert _problem(F.binary_cross_entropy, torch.sigmoid(logits), (logits > 0).float(), BINARY_PROBABILITIES) is None
    assert _problem(F.kl_div, logits.log_softmax(-1), logits.softmax(-1), LOG_PROBABILITIES) is None
    assert _problem(F.mse_loss, logits, logits, SCORES) is None
    assert _problem(lambda a, b: (a - b).sum(), logits.softmax(-1), labels, PROBABILITIES) is None  # unknown loss
    nan = torch.full((4, 3), float("nan"))
    assert _problem(F.cross_entropy, nan, torch.zeros(4, dtype=torch.long)) is None


def test_ignore_index_rows_are_left_out(labels):
    # ignored positions hold padding garbage (here: huge scores); the other rows are log-probabilities
    scores = torch.randn(16, 5).log_softmax(-1)
    target = labels.clone()
    target[:4] = -100
    scores[:4] = 50.0
    assert _problem(F.nll_loss, scores, target) is None
    assert _problem(functools.partial(F.nll_loss, ignore_index=3), scores, torch.where(target < 0, 3, target)) is None
    assert _problem(nn.NLLLoss(ignore_index=0), scores, torch.where(target < 0, 0, target)) is None
    all_ignored = torch.full((16,), -100)
    assert _problem(F.nll_loss, torch.randn(16, 5), all_ignored, SCORES) is None


def test_sequence_layout_class_dim_is_one():
    logp = torch.randn(2, 4, 7).log_softmax(1)  # (N, C, T)
    assert _problem(F.nll_loss, logp, torch.randint(0, 4, (2, 7))) is None
    assert _problem(F.nll_loss, logp.exp(), torch.randint(0, 4, (2, 7))) == ("probabilities-into-nll-loss", "warning")


def test_forms_follow_provenance_not_values():
    x = torch.randn(8, 4)
    w = torch.randn(4, 3)
    with track_forms() as forms:
        logits = x @ w
        probs = torch.softmax(logits, dim=1)
        kept = probs.clamp(1e-6, 1.0)[:, :2].reshape(8, 2)
        logp = torch.log(probs + 1e-8)
        logsm = F.log_softmax(logits, dim=1)
        sig = torch.sigmoid(logits).view(-1)
        lost = probs * 2.0  # no longer probabilities
        picks = logits.argmax(1).float()
        small = torch.rand(8, 3) * 0.01  # values in [0, 1], from nowhere in particular
        both = torch.cat([probs, probs])
        mixed = torch.cat([probs, logits])
    assert forms.of(logits) == SCORES
    assert forms.of(probs) == PROBABILITIES and forms.of(kept) == PROBABILITIES and forms.of(both) == PROBABILITIES
    assert forms.of(logp) == LOG_PROBABILITIES and forms.of(logsm) == LOG_PROBABILITIES
    assert forms.of(sig) == BINARY_PROBABILITIES
    assert forms.of(picks) == INDICES
    assert forms.of(lost) is None and forms.of(small) is None and forms.of(mixed) is None
    assert forms.of("not a tensor") is None


def test_ctc_loss_wants_log_probabilities_over_the_classes():
    torch.manual_seed(0)
    logits = torch.randn(12, 2, 5)  # (T, N, C)
    targets, in_len, tgt_len = torch.randint(1, 5, (2, 4)), torch.full((2,), 12), torch.full((2,), 4)
    ctc = functools.partial(F.ctc_loss, targets=targets, input_lengths=in_len, target_lengths=tgt_len)
    # PyTorch itself: ctc_loss does not normalise, so raw scores give another (meaningless) loss
    assert not torch.allclose(ctc(logits), ctc(logits.log_softmax(-1)))
    problem = check_loss_input(F.ctc_loss, logits, form=SCORES)
    assert problem.kind == "logits-into-ctc-loss" and problem.severity == "error"
    assert check_loss_input(F.ctc_loss, logits).severity == "warning"  # values alone
    assert check_loss_input(F.ctc_loss, logits.softmax(-1), form=PROBABILITIES).kind == "probabilities-into-ctc-loss"
    assert check_loss_input(F.ctc_loss, logits.log_softmax(-1)) is None
    assert check_loss_input(nn.CTCLoss(), logits.log_softmax(-1).double(), form=LOG_PROBABILITIES) is None
