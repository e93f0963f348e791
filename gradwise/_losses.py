"""The loss table and the loss-input check, shared by ``gradwise.per_sample`` and the doctor.

The classic bug: a loss that applies its own normalisation (``cross_entropy`` applies
``log_softmax``, ``binary_cross_entropy_with_logits`` applies ``sigmoid``) receives an
already normalised input, or a loss that expects normalised input (``nll_loss``,
``binary_cross_entropy``, ``kl_div``) receives something else. The loss still returns a
number, training still runs, and a check that compares against the same wrong loss passes.

What a tensor *is* is decided from where it came from, its **form**, not from its values:
``softmax`` makes probabilities, ``sigmoid`` makes per-element probabilities,
``log_softmax`` (or ``log`` of probabilities) makes log-probabilities, a linear layer,
matmul or convolution makes raw scores, ``argmax`` makes class indices; views, copies,
indexing, ``clamp`` and ``cat`` keep the form, every other operation forgets it
(:func:`form_after`). The doctor tracks forms along with everything else it records;
``per_sample`` runs its forward under :func:`track_forms`.

:func:`check_loss_input` decides from the form first. Errors need a form: probabilities
or sigmoid outputs into ``cross_entropy``, ``nll_loss``, ``kl_div`` or
``binary_cross_entropy_with_logits``; raw scores into ``nll_loss``; class indices into a
regression loss. ``log_softmax`` into ``cross_entropy`` computes the same loss and the
same gradients (``log_softmax`` of log-probabilities is the identity), so it is a warning.
Without a form the values are at most a weak hint, and a hint is never an error: rows
that lie in [0, 1] and sum to 1 (or whose ``logsumexp`` is 0) into ``cross_entropy``, and
rows that are not log-probabilities into ``nll_loss``, are warnings; values in [0, 1]
into ``binary_cross_entropy_with_logits`` say nothing at all (raw logits near 0 land
there too). Two value checks are certain and stay errors: ``binary_cross_entropy`` of
values outside [0, 1] and a regression loss of an integer tensor (PyTorch raises on both
right after). Rows whose target is ``ignore_index`` are left out; of the rest the first
4096 are examined; at least 2 classes are needed. ``tol`` is ``1e-3`` (``1e-2`` for
float16 and bfloat16). Non-finite inputs are left to other checks.

Example:
    >>> import torch
    >>> import torch.nn.functional as F
    >>> probs = torch.softmax(torch.randn(4, 3), dim=-1)
    >>> labels = torch.tensor([0, 1, 2, 0])
    >>> check_loss_input(F.cross_entropy, probs, labels, form=PROBABILITIES).kind
    'probabilities-into-cross-entropy'
    >>> check_loss_input(F.cross_entropy, probs, labels).severity  # values alone: a hint
    'warning'
    >>> with track_forms() as forms:
    ...     out = torch.log_softmax(torch.randn(4, 3), -1)
    >>> forms.of(out)
    'log-probabilities'
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode, resolve_name
from torch.utils.weak import WeakTensorKeyDictionary

from gradwise._graph import tensors_in

__all__ = [
    "BINARY_PROBABILITIES",
    "CHECKED_LOSSES",
    "INDICES",
    "LOG_PROBABILITIES",
    "LOSS_MODULES",
    "PROBABILITIES",
    "REGRESSION_LOSSES",
    "SCORES",
    "FormTracker",
    "LossInputProblem",
    "check_loss_input",
    "form_after",
    "loss_arguments",
    "loss_name",
    "loss_option",
    "op_name",
    "op_names",
    "track_forms",
]

ERROR, WARNING = "error", "warning"

# forms: what a tensor is, by where it came from
PROBABILITIES = "probabilities"  # softmax: each row in the simplex
BINARY_PROBABILITIES = "sigmoid-probabilities"  # sigmoid: each element in (0, 1)
LOG_PROBABILITIES = "log-probabilities"  # log_softmax, or log of probabilities
LOG_BINARY_PROBABILITIES = "log-sigmoid-probabilities"
SCORES = "scores"  # raw output of an affine layer: logits
INDICES = "indices"  # argmax / argmin: class indices

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
    nn.CTCLoss: "ctc_loss",
}
_FUNCTIONALS = {getattr(F, name): name for name in LOSS_MODULES.values()}
CHECKED_LOSSES = frozenset(
    {"cross_entropy", "nll_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits", "kl_div"}
    | {"mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "ctc_loss"}
)
"""The losses :func:`check_loss_input` has rules for (functional names)."""
REGRESSION_LOSSES = frozenset({"mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss"})
_MAX_ROWS = 4096  # rows examined (the first ones): the check stays cheap next to the loss itself

# --- forms ---------------------------------------------------------------------------------

_MAKES = {
    "softmax": PROBABILITIES,
    "_softmax": PROBABILITIES,
    "softmin": PROBABILITIES,
    "gumbel_softmax": PROBABILITIES,
    "log_softmax": LOG_PROBABILITIES,
    "_log_softmax": LOG_PROBABILITIES,
    "sigmoid": BINARY_PROBABILITIES,
    "sigmoid_": BINARY_PROBABILITIES,
    "hardsigmoid": BINARY_PROBABILITIES,
    "logsigmoid": LOG_BINARY_PROBABILITIES,
    "argmax": INDICES,
    "argmin": INDICES,
}
_AFFINE = frozenset(
    {"linear", "matmul", "mm", "addmm", "bmm", "baddbmm", "__matmul__", "__rmatmul__", "einsum", "bilinear"}
    | {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
)
_KEEPS = frozenset(
    {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "permute", "transpose", "t", "mT"}
    | {"contiguous", "clone", "to", "float", "double", "half", "bfloat16", "type", "cpu", "cuda", "detach"}
    | {"__getitem__", "select", "narrow", "index_select", "masked_select", "expand", "expand_as", "repeat"}
    | {"movedim", "moveaxis", "view_as", "reshape_as", "squeeze_", "unsqueeze_", "split", "chunk", "unbind"}
    | {"clamp", "clip", "clamp_", "clip_", "clamp_min", "clamp_max", "clamp_min_", "clamp_max_", "swapaxes"}
    | {"cat", "concat", "concatenate", "stack", "hstack", "vstack", "squeeze_copy", "detach_"}
)
_LOG = {"log", "log_"}
_LOG_OF = {PROBABILITIES: LOG_PROBABILITIES, BINARY_PROBABILITIES: LOG_BINARY_PROBABILITIES}
_SMALL_SHIFT = {"add", "__add__", "__radd__", "add_", "__iadd__"}  # probs + 1e-8 stays probabilities


_NAMES: dict[Any, tuple[str, str]] = {}


def op_names(func: Any) -> tuple[str, str]:
    """The full and the short name of a torch callable as a TorchFunctionMode sees it:
    ``("torch.nn.functional.softmax", "softmax")``, ``("torch.Tensor.grad.__get__", "grad")``
    (cached: ``resolve_name`` costs microseconds)."""
    try:
        cached = _NAMES.get(func)
    except TypeError:  # unhashable
        cached = None
    if cached is not None:
        return cached
    name = resolve_name(func)
    if name is None:
        module, qualname = getattr(func, "__module__", None), getattr(func, "__qualname__", None)
        name = f"{module}.{qualname}" if module and qualname else getattr(func, "__name__", str(func))
    short = name.rsplit(".", 2)[-2] if name.endswith(("__get__", "__set__")) else name.rsplit(".", 1)[-1]
    cached = (name, short)
    try:
        if len(_NAMES) < 65536:
            _NAMES[func] = cached
    except TypeError:
        pass
    return cached


def op_name(func: Any) -> str:
    """The short name of a torch callable (``softmax``, ``__getitem__``, ``grad`` for the
    ``.grad`` getter)."""
    return op_names(func)[1]


def form_after(op: str, forms: list[str | None], args: tuple = (), kwargs: dict | None = None) -> str | None:
    """The form of what ``op`` returns, given the forms of its tensor inputs (in order)."""
    made = _MAKES.get(op)
    if made is not None:
        return made
    if op in _AFFINE:
        return SCORES
    first = forms[0] if forms else None
    if first is None:
        return None
    if op in _KEEPS:
        # cat / stack keep a form only when every input has it
        return first if all(f == first for f in forms) else None
    if op in _LOG:
        return _LOG_OF.get(first)
    if op in _SMALL_SHIFT and first in (PROBABILITIES, BINARY_PROBABILITIES) and len(args) > 1:
        shift = args[1]
        if isinstance(shift, float | int) and not isinstance(shift, bool) and 0 <= shift <= 1e-3:
            return first
    return None


class FormTracker(TorchFunctionMode):
    """A TorchFunctionMode that records the form of every tensor made while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self._forms = WeakTensorKeyDictionary()

    def of(self, tensor: Any) -> str | None:
        """The form of ``tensor``, or None when it is unknown."""
        return self._forms.get(tensor) if isinstance(tensor, torch.Tensor) else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            op = op_name(func)
            forms = [self._forms.get(a) for a in tensors_in(args)]
            form = form_after(op, forms, args, kwargs)
            if form is not None:
                for o in tensors_in((out,)):
                    self._forms[o] = form
        except Exception:  # the forms are a hint; they never break the forward
            pass
        return out


def track_forms() -> FormTracker:
    """A context manager that tracks the forms of the tensors made inside it (see the module)."""
    return FormTracker()


# --- the loss table ------------------------------------------------------------------------


@dataclass(frozen=True)
class LossInputProblem:
    """A loss that receives the wrong kind of input.

    Attributes:
        kind: a machine-readable code, e.g. ``"probabilities-into-cross-entropy"``.
        severity: ``"error"`` (the loss computes the wrong thing) or ``"warning"`` (right
            value, wasted work, or a hint from the values alone).
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


def loss_arguments(args: tuple, kwargs: dict) -> tuple[Any, Any]:
    """The input and the target of a call ``F.<loss>(input, target, ...)``, by position or by name."""
    inp = args[0] if args else kwargs.get("input")
    target = args[1] if len(args) > 1 else kwargs.get("target")
    return inp, target


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


_SEEN_FROM = {
    PROBABILITIES: "the output of a softmax",
    BINARY_PROBABILITIES: "the output of a sigmoid",
    LOG_PROBABILITIES: "the output of a log_softmax",
    SCORES: "raw scores (the output of a linear, matmul or convolution)",
    INDICES: "class indices from argmax/argmin",
}


def check_loss_input(
    loss_fn: Callable[..., Any], input: Any, target: Any = None, *, form: str | None = None
) -> LossInputProblem | None:
    """Whether ``loss_fn`` receives the kind of input it expects (see the module's rules).

    Args:
        loss_fn: the loss: a ``torch.nn.functional`` loss, a ``functools.partial`` of one, or
            an ``nn`` loss module (``nn.CrossEntropyLoss(ignore_index=0)``). Other callables
            are not checked.
        input: what the loss receives first: ``(N, C, ...)`` scores for a classification
            loss, any shape for the others.
        target: what it receives second (class indices are used to leave out ignored rows).
        form: where ``input`` came from (one of this module's forms), or None when unknown;
            without it only the values are looked at, and they never make an error alone.

    Returns:
        A :class:`LossInputProblem`, or ``None`` when nothing is wrong or the loss is unknown.

    Example:
        >>> import torch.nn.functional as F
        >>> logits = torch.randn(4, 3)
        >>> check_loss_input(F.nll_loss, logits, torch.tensor([0, 1, 2, 0]), form=SCORES).kind
        'logits-into-nll-loss'
        >>> check_loss_input(F.nll_loss, logits.log_softmax(-1), torch.tensor([0, 1, 2, 0])) is None
        True
    """
    name = loss_name(loss_fn)
    if name is None or not isinstance(input, torch.Tensor) or input.numel() == 0:
        return None
    if name in REGRESSION_LOSSES:
        return _check_regression(name, input, form)
    if not input.is_floating_point():
        return None
    x = input.detach()
    if name in ("cross_entropy", "nll_loss"):
        return _check_classification(name, loss_fn, x, target, form)
    if name == "ctc_loss":
        return _check_ctc(x, form)
    if not bool(torch.isfinite(x).all()):
        return None
    if name == "binary_cross_entropy_with_logits":
        if form in (PROBABILITIES, BINARY_PROBABILITIES):
            return LossInputProblem(
                "probabilities-into-bce-with-logits",
                ERROR,
                name,
                f"binary_cross_entropy_with_logits receives {_SEEN_FROM[form]}: it applies sigmoid itself and "
                "expects raw logits, so the probabilities are squashed a second time and the gradient shrinks.",
                "pass the logits (drop the sigmoid before the loss), or use F.binary_cross_entropy on the "
                "probabilities.",
            )
        return None
    if name == "binary_cross_entropy":
        if bool(((x < 0) | (x > 1)).any()):
            return LossInputProblem(
                "logits-into-bce",
                ERROR,
                name,
                f"binary_cross_entropy receives values outside [0, 1] (from {float(x.min()):.3g} to "
                f"{float(x.max()):.3g}), which look like logits; it expects probabilities.",
                "use F.binary_cross_entropy_with_logits on the logits (more stable than sigmoid + BCE).",
            )
        return None
    if name == "kl_div" and form in (PROBABILITIES, BINARY_PROBABILITIES):
        return LossInputProblem(
            "probabilities-into-kl-div",
            ERROR,
            name,
            f"kl_div receives {_SEEN_FROM[form]} as its input, but it expects log-probabilities there (only the "
            "target is in probability space, unless log_target=True).",
            "pass log_softmax(...) as the input: F.kl_div(F.log_softmax(student, dim=1), F.softmax(teacher, "
            "dim=1), reduction='batchmean').",
        )
    return None


def _check_classification(name, loss_fn, x, target, form) -> LossInputProblem | None:
    if form in (PROBABILITIES, BINARY_PROBABILITIES):
        if name == "cross_entropy":
            return LossInputProblem(
                "probabilities-into-cross-entropy",
                ERROR,
                name,
                f"cross_entropy receives {_SEEN_FROM[form]}, but it applies log_softmax itself and expects raw "
                "logits: the loss is computed on squashed scores and its gradient nearly vanishes.",
                "pass the logits (drop the softmax before the loss), or pass probs.log() to F.nll_loss.",
            )
        return LossInputProblem(
            "probabilities-into-nll-loss",
            ERROR,
            name,
            f"nll_loss receives {_SEEN_FROM[form]}, but it expects log-probabilities.",
            "apply log_softmax instead of softmax before F.nll_loss, or pass the logits to F.cross_entropy.",
        )
    if form == LOG_PROBABILITIES:
        if name == "cross_entropy":
            return LossInputProblem(
                "log-probabilities-into-cross-entropy",
                WARNING,
                name,
                "cross_entropy receives the output of a log_softmax: redundant, harmless (log_softmax of "
                "log-probabilities is the identity, so the loss and its gradients are the same); the work is done "
                "twice.",
                "use F.nll_loss on the log-probabilities, or drop the log_softmax and pass the logits.",
            )
        return None
    if form == INDICES:
        return None  # an integer dtype: PyTorch raises on its own
    rows = _rows(x, target, loss_option(loss_fn, "ignore_index", -100))
    if rows is None or not bool(torch.isfinite(rows).all()):
        return None
    rows = rows.float() if rows.dtype in (torch.float16, torch.bfloat16) else rows
    tol = _tol(x)
    simplex = bool(((rows >= -tol) & (rows <= 1 + tol)).all()) and bool(((rows.sum(-1) - 1).abs() <= tol).all())
    lse = torch.logsumexp(rows, dim=-1)
    normalised_log = bool((lse.abs() <= tol).all())
    if name == "cross_entropy":
        if form is None and simplex:
            return LossInputProblem(
                "probabilities-into-cross-entropy",
                WARNING,
                name,
                "cross_entropy receives rows that lie in [0, 1] and sum to 1, like probabilities (where they came "
                "from was not seen); cross_entropy applies log_softmax itself and expects raw logits.",
                "if these are probabilities, pass the logits instead, or pass probs.log() to F.nll_loss.",
            )
        if form is None and normalised_log:
            return LossInputProblem(
                "log-probabilities-into-cross-entropy",
                WARNING,
                name,
                "cross_entropy receives rows whose logsumexp is 0, like log-probabilities: redundant, harmless "
                "(log_softmax of log-probabilities is the identity, the loss is the same); the work is done twice.",
                "use F.nll_loss on the log-probabilities, or drop the log_softmax and pass the logits.",
            )
        return None
    if simplex and form is None:
        return LossInputProblem(
            "probabilities-into-nll-loss",
            WARNING,
            name,
            "nll_loss receives rows that lie in [0, 1] and sum to 1, like probabilities (where they came from was "
            "not seen); nll_loss expects log-probabilities.",
            "apply log_softmax instead of softmax before F.nll_loss, or pass the logits to F.cross_entropy.",
        )
    if not normalised_log:
        worst = float(lse.abs().max())
        seen = f"{_SEEN_FROM[SCORES]}" if form == SCORES else "rows that are not log-probabilities"
        return LossInputProblem(
            "logits-into-nll-loss",
            ERROR if form == SCORES else WARNING,
            name,
            f"nll_loss receives {seen}: a row's logsumexp is {worst:.3g} away from 0, but nll_loss expects "
            "log-probabilities.",
            "apply log_softmax(dim=1) before F.nll_loss, or pass the logits to F.cross_entropy.",
        )
    return None


def _check_ctc(x: torch.Tensor, form: str | None) -> LossInputProblem | None:
    """ctc_loss takes log-probabilities over the last dimension, (T, N, C) or (T, C)."""
    if form == LOG_PROBABILITIES or x.dim() < 2 or not bool(torch.isfinite(x).all()):
        return None
    rows = x.reshape(-1, x.shape[-1])[:_MAX_ROWS]
    rows = rows.float() if rows.dtype in (torch.float16, torch.bfloat16) else rows
    lse = torch.logsumexp(rows, dim=-1)
    if bool((lse.abs() <= _tol(rows)).all()):
        return None
    known = form in (SCORES, PROBABILITIES, BINARY_PROBABILITIES)
    seen = _SEEN_FROM[form] if known else "values that are not log-probabilities"
    return LossInputProblem(
        "logits-into-ctc-loss" if form != PROBABILITIES else "probabilities-into-ctc-loss",
        ERROR if known else WARNING,
        "ctc_loss",
        f"ctc_loss receives {seen}: a frame's logsumexp over the classes is {float(lse.abs().max()):.3g} away from "
        "0, but ctc_loss expects log-probabilities (it does not normalise them itself).",
        "apply log_softmax over the class dimension before F.ctc_loss: F.ctc_loss(logits.log_softmax(-1), ...).",
    )


def _check_regression(name: str, input: torch.Tensor, form: str | None) -> LossInputProblem | None:
    if input.dtype == torch.bool or input.is_complex():
        return None
    if input.is_floating_point() and form != INDICES:
        return None
    return LossInputProblem(
        "class-indices-into-regression",
        ERROR,
        name,
        f"{name} receives class indices ({input.dtype}, shape {tuple(input.shape)}), such as argmax(...) outputs, "
        "through which no gradient flows.",
        "regress on the scores or probabilities themselves, use F.cross_entropy on the logits for classes, or "
        "gw.ops.argmax_onehot for a hard choice that passes a gradient.",
    )
