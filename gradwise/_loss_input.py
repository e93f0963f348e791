"""Is the loss fed what it expects? One check, shared by ``gradwise.per_sample`` and the doctor.

The classic bug: a loss that applies its own normalisation (``cross_entropy`` applies
``log_softmax``, ``binary_cross_entropy_with_logits`` applies ``sigmoid``) receives an
already normalised input, or a loss that expects normalised input (``nll_loss``,
``binary_cross_entropy``) receives raw scores. The loss still returns a number, training
still runs, and a check that compares against the same wrong loss still passes.

:func:`check_loss_input` looks at the loss function and the tensors it receives and
returns a :class:`LossInputProblem` or ``None``. The decision rules, chosen so that a
correct program is not flagged (no false alarms on tiny batches, all-negative logits,
label smoothing, ``ignore_index``):

- The class dimension is 1 (0 for a 1-d input), as in PyTorch. Rows whose target is
  ``ignore_index`` are left out, and of the others the first 4096 are examined (a few
  rows suffice: every rule below is about each row); at least 2 classes are needed,
  otherwise nothing is said.
- ``cross_entropy`` receives *probabilities* (``"probabilities-into-cross-entropy"``,
  an error) when every value lies in [0, 1] and every row sums to 1 (within ``tol``).
  It receives *log-probabilities* (``"log-probabilities-into-cross-entropy"``, a warning:
  ``log_softmax`` is idempotent, so the value is right, the work is done twice) when every
  row's ``logsumexp`` is 0 within ``tol``; logits that are merely all negative are not
  flagged.
- ``nll_loss`` receives *probabilities* (``"probabilities-into-nll-loss"``) when every
  value lies in [0, 1] and every row sums to 1, and *raw scores*
  (``"logits-into-nll-loss"``) when some row's ``logsumexp`` is not 0 within ``tol``
  (log-probabilities have ``logsumexp == 0`` in every row, whatever the batch size).
- ``binary_cross_entropy_with_logits`` receives *probabilities*
  (``"probabilities-into-bce-with-logits"``) when it gets at least 8 values, all in
  [0, 1] (raw logits of a model land on both sides of 0; 8 values all in [0, 1] by chance
  is rarer than 1 in 256 even for logits near 0).
- ``binary_cross_entropy`` receives *logits* (``"logits-into-bce"``) when a value lies
  outside [0, 1].
- A regression loss (``mse_loss``, ``l1_loss``, ``smooth_l1_loss``, ``huber_loss``)
  receives *class indices* (``"class-indices-into-regression"``) when the input has an
  integer dtype, or holds at least 2 values, all whole numbers, and carries no gradient
  (what ``argmax(...).float()`` gives; ``gw.ops.round_ste`` outputs keep their gradient and
  are not flagged).

``tol`` is ``1e-3`` (``1e-2`` for float16 and bfloat16). Non-finite inputs are left to
other checks.

Example:
    >>> import torch
    >>> import torch.nn.functional as F
    >>> probs = torch.softmax(torch.randn(4, 3), dim=-1)
    >>> problem = check_loss_input(F.cross_entropy, probs, torch.tensor([0, 1, 2, 0]))
    >>> problem.kind
    'probabilities-into-cross-entropy'
    >>> check_loss_input(F.cross_entropy, torch.randn(4, 3), torch.tensor([0, 1, 2, 0])) is None
    True
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LOSS_MODULES", "LossInputProblem", "check_loss_input", "loss_name", "loss_option"]

ERROR, WARNING = "error", "warning"

# nn loss module -> the functional it calls (the names are those of torch.nn.functional)
LOSS_MODULES: dict[type, str] = {
    nn.CrossEntropyLoss: "cross_entropy",
    nn.NLLLoss: "nll_loss",
    nn.MSELoss: "mse_loss",
    nn.L1Loss: "l1_loss",
    nn.SmoothL1Loss: "smooth_l1_loss",
    nn.HuberLoss: "huber_loss",
    nn.BCELoss: "binary_cross_entropy",
    nn.BCEWithLogitsLoss: "binary_cross_entropy_with_logits",
    nn.KLDivLoss: "kl_div",
    nn.SoftMarginLoss: "soft_margin_loss",
    nn.PoissonNLLLoss: "poisson_nll_loss",
}
_FUNCTIONALS = {getattr(F, name): name for name in LOSS_MODULES.values()}
_REGRESSION = ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss")
_MAX_ROWS = 4096  # rows examined (the first ones): the check stays cheap next to the loss itself


@dataclass(frozen=True)
class LossInputProblem:
    """A loss that receives the wrong kind of input.

    Attributes:
        kind: a machine-readable code, e.g. ``"probabilities-into-cross-entropy"``.
        severity: ``"error"`` (the loss computes the wrong thing) or ``"warning"`` (right
            value, wasted or fragile work).
        loss: the functional name of the loss (``"cross_entropy"``).
        message: what was seen, in one or two sentences.
        fix: the remedy, naming the function to call instead.
    """

    kind: str
    severity: str
    loss: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.message} Fix: {self.fix}"


def loss_name(loss_fn: Any) -> str | None:
    """The ``torch.nn.functional`` name of a known loss (a functional, a ``functools.partial``
    of one, or an ``nn`` loss module), or ``None`` for any other callable."""
    while isinstance(loss_fn, functools.partial):
        loss_fn = loss_fn.func
    for cls, name in LOSS_MODULES.items():
        if type(loss_fn) is cls:
            return name
    try:
        return _FUNCTIONALS.get(loss_fn)
    except TypeError:  # unhashable callable
        return None


def loss_option(loss_fn: Any, name: str, default: Any) -> Any:
    """An option of the loss (``ignore_index``), from the module or the partial's keywords."""
    if isinstance(loss_fn, nn.Module):
        return getattr(loss_fn, name, default)
    keywords: dict[str, Any] = {}
    while isinstance(loss_fn, functools.partial):
        keywords = {**loss_fn.keywords, **keywords}
        loss_fn = loss_fn.func
    return keywords.get(name, default)


def _rows(inp: torch.Tensor, target: Any, ignore_index: int) -> torch.Tensor | None:
    """The score rows (N, C) of a classification input, without ignored rows."""
    if inp.dim() == 0:
        return None
    class_dim = 0 if inp.dim() == 1 else 1
    if inp.dim() > 1:  # the first samples only, before any copy
        per_sample = max(1, inp[0].numel() // max(1, inp.shape[1]))
        keep_samples = -(-_MAX_ROWS // per_sample)
        inp = inp[:keep_samples]
        if isinstance(target, torch.Tensor) and target.dim() > 0:
            target = target[:keep_samples]
    rows = inp.detach().movedim(class_dim, -1).reshape(-1, inp.shape[class_dim])
    if (
        isinstance(target, torch.Tensor)
        and not target.is_floating_point()
        and target.numel() * inp.shape[class_dim] == inp.numel()
    ):
        keep = target.reshape(-1) != ignore_index
        rows = rows[keep.to(rows.device)]
    rows = rows[:_MAX_ROWS]
    return rows if rows.shape[0] > 0 and rows.shape[1] >= 2 else None


def _tol(inp: torch.Tensor) -> float:
    return 1e-2 if inp.dtype in (torch.float16, torch.bfloat16) else 1e-3


def check_loss_input(loss_fn: Callable[..., Any], input: Any, target: Any = None) -> LossInputProblem | None:
    """Whether ``loss_fn`` receives the kind of input it expects (see the module's rules).

    Args:
        loss_fn: the loss: a ``torch.nn.functional`` loss, a ``functools.partial`` of one, or
            an ``nn`` loss module (``nn.CrossEntropyLoss(ignore_index=0)``). Other callables
            are not checked.
        input: what the loss receives first: ``(N, C, ...)`` scores for a classification
            loss, any shape for the others.
        target: what it receives second (class indices are used to leave out ignored rows).

    Returns:
        A :class:`LossInputProblem`, or ``None`` when nothing is wrong or the loss is unknown.

    Example:
        >>> import torch.nn.functional as F
        >>> logits = torch.randn(4, 3)
        >>> check_loss_input(F.nll_loss, logits, torch.tensor([0, 1, 2, 0])).kind
        'logits-into-nll-loss'
        >>> check_loss_input(F.nll_loss, logits.log_softmax(-1), torch.tensor([0, 1, 2, 0])) is None
        True
    """
    name = loss_name(loss_fn)
    if name is None or not isinstance(input, torch.Tensor) or input.numel() == 0:
        return None
    if name in _REGRESSION:
        return _check_regression(name, input)
    if not input.is_floating_point():
        return None
    tol = _tol(input)
    x = input.detach()
    if name in ("cross_entropy", "nll_loss"):
        rows = _rows(x, target, loss_option(loss_fn, "ignore_index", -100))
        if rows is None or not bool(torch.isfinite(rows).all()):
            return None
        rows = rows.float() if rows.dtype in (torch.float16, torch.bfloat16) else rows
        in_unit = bool(((rows >= -tol) & (rows <= 1 + tol)).all())
        sums_to_one = bool(((rows.sum(-1) - 1).abs() <= tol).all())
        lse = torch.logsumexp(rows, dim=-1)
        normalised_log = bool((lse.abs() <= tol).all())
        if name == "cross_entropy":
            if in_unit and sums_to_one:
                return LossInputProblem(
                    "probabilities-into-cross-entropy",
                    ERROR,
                    name,
                    "cross_entropy received probabilities (every row lies in [0, 1] and sums to 1), but it applies "
                    "log_softmax itself and expects raw logits.",
                    "pass the logits (drop the softmax before the loss), or pass probs.log() to F.nll_loss.",
                )
            if normalised_log:
                return LossInputProblem(
                    "log-probabilities-into-cross-entropy",
                    WARNING,
                    name,
                    "cross_entropy received log-probabilities (every row's logsumexp is 0), so log_softmax is "
                    "applied twice; the value is the same, the work is wasted.",
                    "pass the logits to F.cross_entropy, or keep the log_softmax and use F.nll_loss.",
                )
            return None
        if in_unit and sums_to_one:
            return LossInputProblem(
                "probabilities-into-nll-loss",
                ERROR,
                name,
                "nll_loss received probabilities (every row lies in [0, 1] and sums to 1), but it expects "
                "log-probabilities.",
                "apply log_softmax instead of softmax before F.nll_loss, or pass the logits to F.cross_entropy.",
            )
        if not normalised_log:
            worst = float(lse.abs().max())
            return LossInputProblem(
                "logits-into-nll-loss",
                ERROR,
                name,
                f"nll_loss received raw scores: a row's logsumexp is {worst:.3g} away from 0, so the rows are not "
                "log-probabilities.",
                "apply log_softmax(dim=1) before F.nll_loss, or pass the logits to F.cross_entropy.",
            )
        return None
    if not bool(torch.isfinite(x).all()):
        return None
    if name == "binary_cross_entropy_with_logits":
        if x.numel() >= 8 and bool(((x >= 0) & (x <= 1)).all()):
            return LossInputProblem(
                "probabilities-into-bce-with-logits",
                ERROR,
                name,
                f"binary_cross_entropy_with_logits received {x.numel()} values all in [0, 1], which look like "
                "sigmoid outputs; it applies sigmoid itself and expects raw logits.",
                "drop the sigmoid before the loss, or use F.binary_cross_entropy on the probabilities.",
            )
        return None
    if name == "binary_cross_entropy":
        if bool(((x < 0) | (x > 1)).any()):
            return LossInputProblem(
                "logits-into-bce",
                ERROR,
                name,
                f"binary_cross_entropy received values outside [0, 1] (from {float(x.min()):.3g} to "
                f"{float(x.max()):.3g}), which look like logits; it expects probabilities.",
                "use F.binary_cross_entropy_with_logits on the logits (more stable than sigmoid + BCE).",
            )
    return None


def _check_regression(name: str, input: torch.Tensor) -> LossInputProblem | None:
    x = input.detach()
    if x.is_floating_point():
        if (
            input.requires_grad
            or x.numel() < 2
            or not bool(torch.isfinite(x).all())
            or not bool((x == x.round()).all())
        ):
            return None
    elif x.dtype == torch.bool or x.is_complex():
        return None
    return LossInputProblem(
        "class-indices-into-regression",
        ERROR,
        name,
        f"{name} received whole numbers without a gradient ({x.dtype}, shape {tuple(x.shape)}): class indices such as "
        "argmax(...) outputs, through which no gradient flows.",
        "regress on the scores or probabilities themselves, use F.cross_entropy on the logits for classes, or "
        "gw.ops.argmax_onehot for a hard choice that passes a gradient.",
    )
