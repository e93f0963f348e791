"""check_function: one call that tells whether a custom ``torch.autograd.Function`` is right.

``torch.autograd.gradcheck`` checks one thing, in float64, and fails by design on a
straight-through estimator (its forward is piecewise constant, so the numerical
derivative is zero while the intended backward is not). :func:`check_function` runs every
check a Function must pass, each reported separately with a reason, and explains the
classic mistakes: a transposed matmul in backward, a missing gradient, a gradient of the
wrong shape, a missing ``None`` for a non-tensor argument, tensors kept on ``ctx``.

Example:
    >>> class Square(torch.autograd.Function):
    ...     @staticmethod
    ...     def forward(ctx, x):
    ...         ctx.save_for_backward(x)
    ...         return x * x
    ...     @staticmethod
    ...     def backward(ctx, grad):
    ...         (x,) = ctx.saved_tensors
    ...         return 2 * x * grad
    >>> report = check_function(Square.apply, torch.randn(3), checks=["gradcheck", "mutation"])
    >>> report.ok
    True
    >>> print(report)
    check_function(Square.apply): ok
      pass     gradcheck         analytic gradients match central differences in float64 (max |difference| ...)
      pass     mutation          no input is modified by forward or backward
"""

from __future__ import annotations

import contextlib
import math
import re
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from gradwise import _validate as v
from gradwise._frames import is_library
from gradwise._graph import custom_function_nodes
from gradwise.errors import ArgumentError, FunctionCheckError

__all__ = ["CHECKS", "CheckResult", "FunctionReport", "assert_function_ok", "check_function"]

PASS, FAIL, ADVICE, SKIPPED = "pass", "fail", "advice", "skipped"
# checks that take seconds (a torch.compile); skipped under fast=True unless asked for by name
_SLOW_CHECKS = ("compile",)

# tolerances of the low-precision comparison with float64: (rtol, atol), relative to the
# largest magnitude of the float64 reference
_DTYPE_TOLERANCES = {
    torch.float32: (1e-4, 1e-5),
    torch.float16: (1e-2, 2e-3),
    torch.bfloat16: (5e-2, 1e-2),
}
_MAX_NUMERICAL_ELEMENTS = 400  # per input; larger inputs are checked on a random subset


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome: ``status`` is ``"pass"``, ``"fail"`` (a wrong result: a gradient,
    an output, a crash), ``"advice"`` (correct, but wasteful or fragile: the message says what
    to change) or ``"skipped"``."""

    name: str
    status: str
    message: str


@dataclass
class FunctionReport:
    """The result of :func:`check_function`.

    Attributes:
        function: a readable name of the checked callable.
        checks: one :class:`CheckResult` per check run, in the order of :data:`CHECKS`.
    """

    function: str
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No check failed (skipped checks do not count against it)."""
        return all(c.status != FAIL for c in self.checks)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == FAIL]

    @property
    def advice(self) -> list[CheckResult]:
        """Checks that found the Function correct but wasteful or fragile."""
        return [c for c in self.checks if c.status == ADVICE]

    def __getitem__(self, name: str) -> CheckResult:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"FunctionReport: no check named {name!r} was run (ran: {[c.name for c in self.checks]})")

    def __str__(self) -> str:
        head = f"check_function({self.function}): " + ("ok" if self.ok else f"{len(self.failed)} check(s) failed")
        if self.advice:
            head += f", {len(self.advice)} advice"
        lines = [head]
        for c in self.checks:
            first, *rest = c.message.splitlines() or [""]
            lines.append(f"  {c.status:<8} {c.name:<17} {first}")
            lines.extend(f"  {'':<8} {'':<17} {line}" for line in rest)
        return "\n".join(lines)

    __repr__ = __str__

    def raise_if_failed(self) -> FunctionReport:
        """Raise :class:`~gradwise.errors.FunctionCheckError` (an ``AssertionError``) with
        the report when a check failed; return the report otherwise."""
        if not self.ok:
            raise FunctionCheckError(str(self))
        return self


def check_function(
    fn: Callable[..., Any],
    *inputs: Any,
    surrogate: Callable[..., Any] | None = None,
    checks: Iterable[str] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    seed: int = 0,
    compile_backend: str = "inductor",
    fast: bool = True,
) -> FunctionReport:
    """Check a custom autograd Function (or any callable that uses one) on example inputs.

    Differentiable inputs are the floating-point tensors among ``inputs`` that require
    grad, or every floating-point tensor when none does. Every check works on copies
    (float64 copies where it needs them): the inputs, the global RNG state and autograd
    state are left as they were. Each call of ``fn`` is made after ``torch.manual_seed(seed)``,
    so a function that samples with the global RNG is checked as a deterministic one.

    Checks (see :data:`CHECKS`; pass ``checks=[...]`` to run a subset):

    - ``gradcheck``: analytic gradients against central differences in float64, input by
      input, naming the input that disagrees and by how much (and whether it is the
      transpose). With ``surrogate`` it is skipped, and the report says whether plain
      ``torch.autograd.gradcheck`` fails and why.
    - ``gradgradcheck``: second derivatives against finite differences of the backward, with
      a cotangent that requires grad (as a gradient penalty has). A backward computed on
      detached tensors without ``@once_differentiable`` fails (its double backward is silently
      wrong); one marked ``@once_differentiable`` is skipped (double backward raises).
    - ``surrogate``: the backward against the autograd gradient of ``surrogate`` (same
      inputs, same cotangent), for estimators whose forward is not differentiable; with or
      without a surrogate, a locally constant forward whose backward gives every class of a
      row the same gradient fails (such a gradient can never change an argmax or a sample).
    - ``needs_input_grad``: backward returns one value per ``forward`` argument and
      gradients of their inputs' shape and dtype; gradients computed for arguments with
      ``ctx.needs_input_grad`` False are advice (wasted work, not a wrong result).
    - ``save_for_backward``: no tensor is kept as an attribute of ``ctx``.
    - ``non_contiguous``: non-contiguous inputs give the same outputs and gradients.
    - ``dtypes``: float32, float16 and bfloat16 agree with float64 within stated tolerances.
    - ``vmap``: ``torch.func.vmap`` over a batch of inputs equals a loop (values and gradients).
    - ``compile``: ``torch.compile`` gives the same outputs and gradients as eager (seconds:
      skipped under ``fast=True`` unless named in ``checks``).
    - ``mutation``: neither forward nor backward modifies an input.
    - ``determinism``: two calls after the same seed give bit-identical outputs.

    Args:
        fn: the callable to check, typically ``MyFunction.apply``.
        *inputs: example arguments of ``fn`` (tensors and other values).
        surrogate: for a straight-through style estimator, a differentiable callable of the
            same inputs whose gradient the backward is meant to reproduce, e.g.
            ``lambda x: torch.softmax(x / tau, -1)``.
        checks: names of the checks to run (default: all).
        atol: absolute tolerance of the float64 gradient comparisons (default 1e-5
            numerical, 1e-7 surrogate).
        rtol: relative tolerance of the same (default 1e-3 numerical, 1e-5 surrogate).
        seed: the seed set before every call of ``fn``.
        compile_backend: the ``torch.compile`` backend of the ``compile`` check.
        fast: skip the slow checks (``compile``) unless ``checks`` names them.

    Returns:
        A :class:`FunctionReport`: ``.ok`` (no check failed; advice does not count),
        ``.checks``, ``.failed``, ``.advice``, a readable ``str()`` and ``.raise_if_failed()``.

    Raises:
        ArgumentError: ``fn`` returns no floating-point tensor on the inputs (nothing to
            differentiate), or no input is a floating-point tensor.
    """
    api = "check_function"
    if not callable(fn):
        raise v.ArgumentTypeError(f"{api}: fn must be callable (got {type(fn).__name__}: {v.describe(fn)})")
    if surrogate is not None and not callable(surrogate):
        raise v.ArgumentTypeError(f"{api}: surrogate must be callable or None (got {type(surrogate).__name__})")
    selected = CHECKS if checks is None else _select_checks(api, checks)
    seed = v.integer(api, "seed", seed)
    tolerances = {
        "numerical": (
            1e-3 if rtol is None else v.real(api, "rtol", rtol, nonnegative=True),
            1e-5 if atol is None else v.real(api, "atol", atol, nonnegative=True),
        ),
        "surrogate": (1e-5 if rtol is None else rtol, 1e-7 if atol is None else atol),
    }
    fast = v.boolean(api, "fast", fast)
    args = _Args(api, inputs)
    ctx = _Context(fn=fn, args=args, surrogate=surrogate, seed=seed, tol=tolerances, backend=compile_backend)
    report = FunctionReport(function=_describe_fn(fn))
    devices = sorted({a.device.index for a in args.tensors if a.is_cuda and a.device.index is not None})
    with torch.random.fork_rng(devices=devices), torch.enable_grad():
        _probe(api, ctx)
        for name in selected:
            if fast and checks is None and name in _SLOW_CHECKS:
                why = f"skipped by fast=True (it takes seconds): pass fast=False or checks=[{name!r}, ...]"
                result = (SKIPPED, why)
            else:
                try:
                    result = _CHECK_FUNCTIONS[name](ctx)
                except Exception as exc:  # a check that crashes reports the crash, not raise
                    result = (FAIL, _explain_exception(exc, ctx))
            report.checks.append(CheckResult(name, *result))
    report.checks = _once_per_cause(report.checks)
    return report


def _probe(api: str, ctx: _Context) -> None:
    """Refuse a fn with nothing to check: it returns no floating-point tensor. A fn that raises
    is left to the checks, which report where."""
    try:
        out = ctx.call(ctx.fn, ctx.args.make(torch.float64))
    except Exception:
        return
    if not ctx.outputs(out):
        raise ArgumentError(
            f"{api}: fn must return a floating-point tensor, or a tuple or list holding one "
            f"(got {v.describe(out)}): there is no gradient to check"
        )


def _once_per_cause(checks: list[CheckResult]) -> list[CheckResult]:
    """A failure with the same text as an earlier one (one bug seen by several checks) is
    reported once; the later checks point to it."""
    first: dict[str, str] = {}
    out = []
    for c in checks:
        if c.status == FAIL:
            key = c.message.strip()
            if key in first:
                c = CheckResult(c.name, FAIL, f"the same error as the {first[key]!r} check above (fix that first)")
            else:
                first[key] = c.name
        out.append(c)
    return out


def assert_function_ok(fn: Callable[..., Any], *inputs: Any, **kwargs: Any) -> FunctionReport:
    """:func:`check_function`, then :meth:`FunctionReport.raise_if_failed`: a one-line test.

    Example:
        >>> assert_function_ok(torch.sin, torch.randn(4), checks=["gradcheck"]).ok
        True
    """
    return check_function(fn, *inputs, **kwargs).raise_if_failed()


# --- arguments -------------------------------------------------------------------------


class _Args:
    """The example inputs, and copies of them in a dtype and layout, with grad set on the
    differentiable ones."""

    def __init__(self, api: str, inputs: Sequence[Any]):
        if not inputs:
            raise ArgumentError(f"{api}: give at least one example input (got none)")
        self.inputs = tuple(inputs)
        floating = [i for i, x in enumerate(inputs) if isinstance(x, torch.Tensor) and x.is_floating_point()]
        wanted = [i for i in floating if inputs[i].requires_grad]
        self.diff = wanted or floating
        if not self.diff:
            raise ArgumentError(
                f"{api}: no input is a floating-point tensor, so there is no gradient to check "
                f"(got {', '.join(v.describe(x) for x in inputs)})"
            )
        self.tensors = [x for x in inputs if isinstance(x, torch.Tensor)]

    def label(self, i: int) -> str:
        x = self.inputs[i]
        return f"input {i} (shape {tuple(x.shape)})"

    def make(self, dtype=torch.float64, *, contiguous=True, only: int | None = None, grad=True) -> list[Any]:
        out = []
        for i, x in enumerate(self.inputs):
            if isinstance(x, torch.Tensor):
                y = x.detach()
                y = y.to(dtype) if x.is_floating_point() else y
                y = y.clone() if contiguous else _non_contiguous(y)
                if grad and i in self.diff and (only is None or only == i):
                    y.requires_grad_(True)
                out.append(y)
            else:
                out.append(x)
        return out


def _non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values with every stride doubled (a view into a larger buffer)."""
    if t.numel() <= 1:
        return t.clone()
    buffer = torch.zeros((*t.shape, 2), dtype=t.dtype, device=t.device)
    view = buffer.select(-1, 0)
    view.copy_(t)
    return view


# --- running fn ------------------------------------------------------------------------


@dataclass
class _Context:
    fn: Callable[..., Any]
    args: _Args
    surrogate: Callable[..., Any] | None
    seed: int
    tol: dict[str, tuple[float, float]]
    backend: str

    def call(self, fn, call_args):
        torch.manual_seed(self.seed)
        return fn(*call_args)

    def outputs(self, out) -> list[torch.Tensor]:
        outs = list(out) if isinstance(out, tuple | list) else [out]
        return [o for o in outs if isinstance(o, torch.Tensor) and o.is_floating_point()]

    def cotangents(self, outs: list[torch.Tensor]) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed + 1)
        return [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.device, o.dtype) for o in outs]

    def value_and_grads(self, call_args, fn=None):
        """fn's floating outputs, and the gradients of <cotangent, outputs> w.r.t. the
        differentiable inputs (None where backward gave none)."""
        fn = self.fn if fn is None else fn
        outs = self.outputs(self.call(fn, call_args))
        diff = [call_args[i] for i in self.args.diff if call_args[i].requires_grad]
        cts = self.cotangents(outs)
        total = sum((o * c).sum() for o, c in zip(outs, cts, strict=True) if o.requires_grad)
        if isinstance(total, torch.Tensor) and total.requires_grad:
            grads = torch.autograd.grad(total, diff, allow_unused=True)
        else:
            grads = (None,) * len(diff)
        return [o.detach() for o in outs], list(grads)

    def scalar(self, call_args, fn=None) -> float:
        """<cotangent, fn(args)> without gradients (for finite differences)."""
        fn = self.fn if fn is None else fn
        with torch.no_grad():
            outs = self.outputs(self.call(fn, call_args))
            return sum((o.double() * c.double()).sum().item() for o, c in zip(outs, self.cotangents(outs), strict=True))


def _describe_fn(fn) -> str:
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, type):
        return f"{owner.__name__}.{getattr(fn, '__name__', 'apply')}"
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def _function_class(fn) -> type | None:
    owner = getattr(fn, "__self__", None)
    return owner if isinstance(owner, type) and issubclass(owner, torch.autograd.Function) else None


def _max_abs(t: torch.Tensor | None) -> float:
    return 0.0 if t is None or t.numel() == 0 else t.detach().abs().max().item()


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> tuple[bool, float]:
    diff = (actual.double() - expected.double()).abs()
    worst = _max_abs(diff)
    bound = atol + rtol * expected.double().abs()
    return bool((diff <= bound).all()) if diff.numel() else True, worst


_INVALID_GRADIENT = re.compile(
    r"invalid gradient at index (\d+) - got \[(.*?)\] but expected shape compatible with \[(.*?)\]"
)


def _explain_exception(exc: Exception, ctx: _Context) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    hints = []
    if "incorrect number of gradients" in text:
        hints.append(
            "backward must return one value per argument of forward, None for the arguments that "
            "are not tensors or need no gradient (e.g. `return grad_x, None` for forward(ctx, x, scale))"
        )
    bad_shape = _INVALID_GRADIENT.search(text)
    if bad_shape:
        index, got, expected = bad_shape.group(1), bad_shape.group(2), bad_shape.group(3)
        transposed = got.split(", ")[::-1] == expected.split(", ")
        hints.append(
            f"backward returned a gradient of shape ({got}) for argument {index} of shape ({expected})"
            + (": its transpose (a transposed matmul in backward?)" if transposed else "")
        )
    if "generate_vmap_rule" in text or "vmap staticmethod" in text:
        hints.append("set `generate_vmap_rule = True` (with a setup_context staticmethod) or define `vmap`")
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not is_library(f.filename)]
    where = f" (raised at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return "\n".join([first + where, *hints])


# --- the checks ------------------------------------------------------------------------


def _numerical_grad(ctx: _Context, call_args: list[Any], i: int, eps: float = 1e-6):
    """Central-difference gradient of <cotangent, fn> w.r.t. input i (float64), and the
    mask of the elements it was computed at (a random subset for large inputs)."""
    x = call_args[i]
    flat = x.detach().clone().reshape(-1)
    grad = torch.zeros_like(flat)
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    if flat.numel() > _MAX_NUMERICAL_ELEMENTS:
        g = torch.Generator().manual_seed(ctx.seed)
        index = torch.randperm(flat.numel(), generator=g)[:_MAX_NUMERICAL_ELEMENTS]
    else:
        index = torch.arange(flat.numel())
    for j in index.tolist():
        values = []
        for step in (eps, -eps):
            moved = flat.clone()
            moved[j] += step
            shifted = list(call_args)
            shifted[i] = moved.reshape(x.shape)
            values.append(ctx.scalar(shifted))
        grad[j] = (values[0] - values[1]) / (2 * eps)
        mask[j] = True
    return grad.reshape(x.shape), mask.reshape(x.shape)


def _compare_numerical(ctx: _Context) -> tuple[list[str], float, bool]:
    """Per-input disagreements between backward and central differences (float64)."""
    rtol, atol = ctx.tol["numerical"]
    call_args = ctx.args.make(torch.float64)
    _, grads = ctx.value_and_grads(call_args)
    problems, worst, all_zero = [], 0.0, True
    for i, analytic in zip(ctx.args.diff, grads, strict=True):
        numerical, mask = _numerical_grad(ctx, [a.detach() if isinstance(a, torch.Tensor) else a for a in call_args], i)
        all_zero = all_zero and _max_abs(numerical) == 0.0
        label = ctx.args.label(i)
        if analytic is None:
            if _max_abs(numerical) > atol:
                problems.append(
                    f"{label}: backward returned no gradient (None) but the numerical gradient is nonzero "
                    f"(max |g| {_max_abs(numerical):.3g}): is its gradient missing from backward's return?"
                )
            continue
        ok, diff = _close(analytic.detach()[mask], numerical[mask], rtol, atol)
        worst = max(worst, diff)
        if not ok:
            msg = (
                f"{label}: analytic and numerical gradients disagree: max |difference| {diff:.3g} "
                f"(analytic max {_max_abs(analytic):.3g}, numerical max {_max_abs(numerical):.3g})"
            )
            factor = _constant_factor(analytic.detach()[mask], numerical[mask])
            if factor is not None:
                msg += (
                    f"; the analytic gradient is {factor:.4g} x the numerical one everywhere: a missing or extra "
                    f"factor in backward (the 2 of d(x^2)/dx, a 1/n of a mean, a tau)"
                )
            if analytic.dim() == 2 and analytic.shape[0] == analytic.shape[1] and mask.all():
                if _close(analytic.detach().T, numerical, rtol, atol)[0]:
                    msg += "; it equals the numerical gradient transposed: a transposed matmul in backward?"
            problems.append(msg)
    return problems, worst, all_zero


def _constant_factor(analytic: torch.Tensor, numerical: torch.Tensor) -> float | None:
    """``c`` when ``analytic == c * numerical`` to rounding, with ``c`` not 1 (and not 0)."""
    if analytic.numel() < 2 or _max_abs(numerical) == 0.0:
        return None
    j = int(numerical.abs().argmax())
    c = float(analytic.reshape(-1)[j] / numerical.reshape(-1)[j])
    if c == 0.0 or abs(c - 1.0) < 1e-3:
        return None
    ok, _ = _close(analytic, c * numerical, 1e-4, 1e-6 * _max_abs(analytic))
    return c if ok else None


def _check_gradcheck(ctx: _Context):
    problems, worst, all_zero = _compare_numerical(ctx)
    if ctx.surrogate is not None:
        if problems:
            plain = _plain_gradcheck(ctx)
            why = (
                "the forward is piecewise constant, so finite differences see a zero derivative "
                "almost everywhere (and spikes across jumps), while the backward returns the "
                "surrogate's gradient by design"
                if all_zero
                else "the backward returns the surrogate's gradient, not the derivative of the forward"
            )
            return SKIPPED, (
                f"not applicable with a surrogate: numerical gradcheck fails here as expected "
                f"(torch.autograd.gradcheck: {plain}); {why}.\n"
                + "\n".join(problems)
                + "\nThe backward is compared with the surrogate's gradient instead (check 'surrogate')."
            )
        return SKIPPED, "not applicable with a surrogate (numerical gradients happen to agree here)"
    if problems:
        if all_zero:
            problems.append(
                "the numerical gradient is zero everywhere: if the forward is piecewise constant and the "
                "backward is a straight-through estimator, pass surrogate=<the differentiable function whose "
                "gradient backward reproduces> to check it against that instead"
            )
        return FAIL, "\n".join(problems)
    return PASS, f"analytic gradients match central differences in float64 (max |difference| {worst:.2g})"


def _plain_gradcheck(ctx: _Context) -> str:
    call_args = ctx.args.make(torch.float64)
    try:
        ok = torch.autograd.gradcheck(
            lambda *a: _call_floating(ctx, a), tuple(call_args), raise_exception=False, nondet_tol=0.0
        )
    except Exception as exc:
        return f"raises {type(exc).__name__}"
    return "passes" if ok else "returns False"


def _call_floating(ctx: _Context, call_args):
    outs = ctx.outputs(ctx.call(ctx.fn, call_args))
    return tuple(outs) if len(outs) != 1 else outs[0]


def _check_gradgradcheck(ctx: _Context):
    call_args = ctx.args.make(torch.float64)
    outs = ctx.outputs(ctx.call(ctx.fn, call_args))
    diff = [call_args[i] for i in ctx.args.diff]
    # a cotangent that requires grad, as in a gradient penalty: the backward's own graph is built
    cts = [c.requires_grad_() for c in ctx.cotangents(outs)]
    total = sum((o * c).sum() for o, c in zip(outs, cts, strict=True) if o.requires_grad)
    if not isinstance(total, torch.Tensor):
        return SKIPPED, "fn's outputs do not require grad"
    try:
        grads = torch.autograd.grad(total, diff, create_graph=True, allow_unused=True)
    except RuntimeError as exc:
        return SKIPPED, f"backward is not differentiable ({str(exc).splitlines()[0]}): no second derivative claimed"
    live = [g for g in grads if g is not None and g.requires_grad]
    if not live:
        return SKIPPED, "the gradient is constant (it depends on neither the inputs nor the cotangent)"
    if any(type(g.grad_fn).__name__ in ("Error", "DelayedError") for g in live):
        return SKIPPED, "backward is marked @once_differentiable: a double backward raises, as it should"
    try:
        torch.autograd.gradgradcheck(lambda *a: _call_floating(ctx, a), tuple(call_args), raise_exception=True)
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0][:300]
        if not _reaches_inputs(live, diff):
            return FAIL, (
                "the double backward is silently wrong: backward computes its gradient from tensors detached "
                "from the inputs (e.g. .detach(), .data, torch.no_grad(), NumPy), so a second derivative "
                "(create_graph=True, a gradient penalty, Hessian-vector products) misses every term through "
                "them. Fix: decorate backward with @torch.autograd.function.once_differentiable (double "
                "backward then raises instead of returning a wrong value), or compute it with differentiable "
                f"torch ops on ctx.saved_tensors.\n(torch.autograd.gradgradcheck: {detail})"
            )
        return FAIL, f"second derivatives disagree with finite differences of the backward:\n{detail}"
    return PASS, "second derivatives match finite differences of the backward (float64)"


def _reaches_inputs(grads: list[torch.Tensor], inputs: list[torch.Tensor]) -> bool:
    """Whether the backward's results depend (in autograd's graph) on any input."""
    total = sum(g.sum() for g in grads)
    found = torch.autograd.grad(total, inputs, allow_unused=True, retain_graph=True)
    return any(f is not None for f in found)


def _row_constant_problems(ctx: _Context) -> list[str]:
    """A locally constant forward (a hard decision) whose backward gives every entry of each
    row (the last dimension) the same gradient: adding it to the logits never changes the
    decision, so the estimator cannot learn."""
    call_args = ctx.args.make(torch.float64)
    outs, grads = ctx.value_and_grads(call_args)
    problems = []
    for i, g in zip(ctx.args.diff, grads, strict=True):
        x = call_args[i]
        if g is None or g.dim() == 0 or g.shape[-1] < 2 or _max_abs(g) == 0.0:
            continue
        spread = (g.amax(-1) - g.amin(-1)).abs().max().item()
        if spread > 1e-12 * _max_abs(g):
            continue
        moved = list(call_args)
        g_noise = torch.Generator().manual_seed(ctx.seed + 2)
        moved[i] = x.detach() + 1e-7 * (x.detach().abs() + 1) * torch.randn(x.shape, generator=g_noise, dtype=x.dtype)
        with torch.no_grad():
            outs2 = ctx.outputs(ctx.call(ctx.fn, moved))
        if all(torch.equal(a, b.detach()) for a, b in zip(outs, outs2, strict=True)):
            problems.append(
                f"{ctx.args.label(i)}: the backward gives every entry of each row (dim -1) the same gradient "
                f"(e.g. grad_output.expand_as(input)), and the forward is a hard decision: adding such a "
                f"gradient to the logits shifts the whole row and never changes an argmax, top-k or sample, "
                f"so nothing is learned. Pass each class its own gradient, by the Jacobian of a relaxation "
                f"(softmax(logits / tau), as the 'softmax' straight-through estimator does)"
            )
    return problems


def _check_surrogate(ctx: _Context):
    if ctx.surrogate is None:
        flat = _row_constant_problems(ctx)
        if flat:
            return FAIL, "\n".join(flat)
        return SKIPPED, "no surrogate given (only needed when the forward is not differentiable)"
    rtol, atol = ctx.tol["surrogate"]
    outs, grads = ctx.value_and_grads(ctx.args.make(torch.float64))
    ref_outs, ref_grads = ctx.value_and_grads(ctx.args.make(torch.float64), fn=ctx.surrogate)
    if [o.shape for o in outs] != [o.shape for o in ref_outs]:
        return FAIL, (
            f"surrogate's outputs have shapes {[tuple(o.shape) for o in ref_outs]}, fn's "
            f"{[tuple(o.shape) for o in outs]}: they must match"
        )
    problems, worst = [], 0.0
    for i, g, ref in zip(ctx.args.diff, grads, ref_grads, strict=True):
        g = torch.zeros_like(ctx.args.make()[i], dtype=torch.float64) if g is None else g
        ref = torch.zeros_like(g) if ref is None else ref
        ok, diff = _close(g, ref, rtol, atol)
        worst = max(worst, diff)
        if not ok:
            problems.append(
                f"{ctx.args.label(i)}: backward differs from the surrogate's gradient: max |difference| {diff:.3g} "
                f"(backward max {_max_abs(g):.3g}, surrogate max {_max_abs(ref):.3g})"
            )
    problems += _row_constant_problems(ctx)
    if problems:
        return FAIL, "\n".join(problems)
    return PASS, f"backward equals the surrogate's autograd gradient in float64 (max |difference| {worst:.2g})"


@contextlib.contextmanager
def _capture_raw_backward(nodes: list[Any]):
    """Record what each custom node's backward returns, before autograd validates it."""
    records: list[tuple[Any, tuple]] = []
    handles = []
    for node in nodes:

        def prehook(grad_outputs, node=node):
            raw = node._forward_cls.backward(node, *grad_outputs)
            records.append((node, raw if isinstance(raw, tuple) else (raw,)))

        handles.append(node.register_prehook(prehook))
    try:
        yield records
    finally:
        for h in handles:
            h.remove()


def _check_needs_input_grad(ctx: _Context):
    problems, errors, checked = [], [], 0
    fn_cls = _function_class(ctx.fn)
    # all differentiable inputs requiring grad, then each one alone
    variants = [None] + (ctx.args.diff if len(ctx.args.diff) > 1 else [])
    for only in variants:
        call_args = ctx.args.make(torch.float64, only=only)
        outs = ctx.outputs(ctx.call(ctx.fn, call_args))
        nodes = custom_function_nodes(outs)
        if not nodes:
            return SKIPPED, "no custom autograd.Function in fn's graph"
        total = sum((o * c).sum() for o, c in zip(outs, ctx.cotangents(outs), strict=True) if o.requires_grad)
        with _capture_raw_backward(nodes) as records:
            try:
                total.backward()
            except RuntimeError as exc:
                if not records:
                    raise
                errors.append(_explain_exception(exc, ctx))
        for node, raw in records:
            checked += 1
            args = call_args if node._forward_cls is fn_cls else None
            problems.extend(_raw_problems(node._forward_cls.__name__, raw, node.needs_input_grad, args))
    problems = _merge_unneeded(list(dict.fromkeys(problems))) or list(dict.fromkeys(errors))
    wasted = [p for p in problems if _UNNEEDED in p]
    wrong = [p for p in problems if _UNNEEDED not in p]
    if wrong:
        return FAIL, "\n".join(wrong + wasted)
    if wasted:
        note = "advice, not an error: the unneeded gradients are discarded, computing them only costs time and memory"
        return ADVICE, "\n".join([*wasted, note])
    return PASS, (
        f"backward returns one value per forward argument, None where ctx.needs_input_grad is False, "
        f"and gradients of their inputs' shapes and dtypes ({checked} backward call(s) checked)"
    )


_UNNEEDED = " returns gradients that were not asked for (argument(s) "


def _merge_unneeded(problems: list[str]) -> list[str]:
    """One line per Function for the gradients computed without being needed."""
    marker = _UNNEEDED
    merged: dict[str, set[str]] = {}
    others = []
    for p in problems:
        if marker in p:
            name, rest = p.split(marker, 1)
            merged.setdefault(name, set()).update(rest.split(" with ", 1)[0].split(", "))
        else:
            others.append(p)
    for name, indices in merged.items():
        listed = ", ".join(sorted(indices, key=int))
        others.append(
            f"{name}{marker}{listed} with ctx.needs_input_grad False): wasted work; compute each only "
            f"`if ctx.needs_input_grad[i]:`"
        )
    return others


def _raw_problems(name: str, raw: tuple, needs: tuple, args: list[Any] | None) -> list[str]:
    problems = []
    if len(raw) != len(needs):
        hint = ""
        if args is not None:
            others = [
                f"argument {j} ({type(a).__name__})" for j, a in enumerate(args) if not isinstance(a, torch.Tensor)
            ]
            if others and len(raw) < len(needs):
                hint = f": return None for the non-tensor {', '.join(others)}"
        problems.append(f"{name}.backward returned {len(raw)} value(s) for {len(needs)} forward argument(s){hint}")
        return problems
    unneeded = []
    for j, (g, need) in enumerate(zip(raw, needs, strict=True)):
        if g is None:
            continue
        if not need:
            if args is not None and not isinstance(args[j], torch.Tensor):
                problems.append(
                    f"{name}.backward returned a gradient for argument {j}, a {type(args[j]).__name__}: "
                    f"return None for arguments that are not tensors"
                )
            else:
                unneeded.append(j)
            continue
        if args is not None and isinstance(args[j], torch.Tensor) and isinstance(g, torch.Tensor):
            a = args[j]
            if g.shape != a.shape:
                if _expandable(a.shape, g.shape):
                    why = (
                        "; autograd summed it to the right shape for you, but a gradient must have its "
                        "input's shape (reduce over the broadcast dimensions)"
                    )
                elif g.dim() == 2 and tuple(g.shape) == tuple(a.shape)[::-1]:
                    why = ": its transpose (a transposed matmul in backward?)"
                else:
                    why = ""
                problems.append(
                    f"{name}.backward returned a gradient of shape {tuple(g.shape)} for argument {j} "
                    f"of shape {tuple(a.shape)}{why}"
                )
            elif g.dtype != a.dtype:
                problems.append(f"{name}.backward returned a {g.dtype} gradient for argument {j} of dtype {a.dtype}")
    if unneeded:
        listed = ", ".join(map(str, sorted(unneeded)))
        problems.append(
            f"{name}.backward returns gradients that were not asked for (argument(s) {listed} with "
            f"ctx.needs_input_grad False): wasted work; compute each only `if ctx.needs_input_grad[i]:`"
        )
    return problems


def _expandable(shape, to_shape) -> bool:
    try:
        return torch.broadcast_shapes(shape, to_shape) == torch.Size(to_shape)
    except RuntimeError:
        return False


def _check_save_for_backward(ctx: _Context):
    call_args = ctx.args.make(torch.float64)
    nodes = custom_function_nodes(ctx.outputs(ctx.call(ctx.fn, call_args)))
    if not nodes:
        return SKIPPED, "no custom autograd.Function in fn's graph"
    problems = []
    for node in nodes:
        for attr, value in vars(node).items():
            items = value if isinstance(value, list | tuple) else [value]
            if any(isinstance(x, torch.Tensor) for x in items):
                problems.append(
                    f"{node._forward_cls.__name__}: ctx.{attr} holds a tensor; save it with "
                    f"ctx.save_for_backward(...) and read ctx.saved_tensors in backward: tensors kept on ctx "
                    f"escape autograd's check for in-place changes (a silently wrong gradient) and can leak memory"
                )
    if problems:
        return FAIL, "\n".join(problems)
    return PASS, f"no tensor kept on ctx ({len(nodes)} Function node(s) inspected)"


def _check_non_contiguous(ctx: _Context):
    outs, grads = ctx.value_and_grads(ctx.args.make(torch.float64))
    strided_args = ctx.args.make(torch.float64, contiguous=False)
    if not any(isinstance(a, torch.Tensor) and not a.is_contiguous() for a in strided_args):
        return SKIPPED, "no input has more than one element"
    outs2, grads2 = ctx.value_and_grads(strided_args)
    problems = _compare_all(ctx, outs2, grads2, outs, grads, 1e-10, 1e-12, "non-contiguous")
    if problems:
        fix = (
            "Fix: the code assumes contiguous memory (.view() on a strided tensor, a kernel or NumPy reading "
            "the raw buffer, data_ptr arithmetic): call .contiguous() on the inputs in forward, and on "
            "grad_output in backward, before such code"
        )
        return FAIL, "\n".join([*problems, fix])
    return PASS, "non-contiguous inputs (every stride doubled) give the same outputs and gradients"


def _compare_all(ctx, outs, grads, ref_outs, ref_grads, rtol, atol, what) -> list[str]:
    problems = []
    for k, (o, r) in enumerate(zip(outs, ref_outs, strict=True)):
        scale = max(1.0, _max_abs(r))
        ok, diff = _close(o, r, rtol, atol * scale)
        if o.shape != r.shape or not ok:
            problems.append(
                f"output {k}: {what} differs: max |difference| {diff:.3g} (reference max {_max_abs(r):.3g})"
            )
    for i, g, r in zip(ctx.args.diff, grads, ref_grads, strict=True):
        if (g is None) != (r is None):
            problems.append(
                f"gradient of {ctx.args.label(i)}: {what} gives {'none' if g is None else 'one'}, "
                f"the reference {'none' if r is None else 'one'}"
            )
            continue
        if g is None:
            continue
        scale = max(1.0, _max_abs(r))
        ok, diff = _close(g, r, rtol, atol * scale)
        if not ok:
            problems.append(
                f"gradient of {ctx.args.label(i)}: {what} differs: max |difference| {diff:.3g} "
                f"(reference max {_max_abs(r):.3g})"
            )
    return problems


def _check_dtypes(ctx: _Context):
    ref_outs, ref_grads = ctx.value_and_grads(ctx.args.make(torch.float64))
    problems, notes = [], []
    for dtype, (rtol, atol) in _DTYPE_TOLERANCES.items():
        name = str(dtype).removeprefix("torch.")
        try:
            outs, grads = ctx.value_and_grads(ctx.args.make(dtype))
        except Exception as exc:
            notes.append(f"{name} not run: fn raises {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
            continue
        found = _compare_all(ctx, outs, grads, ref_outs, ref_grads, rtol, atol, f"{name} vs float64")
        if found:
            problems.extend([*found, f"(tolerance for {name}: rtol {rtol:g}, atol {atol:g} x max(1, |reference|))"])
        else:
            notes.append(f"{name} agrees (rtol {rtol:g}, atol {atol:g})")
    if problems:
        return FAIL, "\n".join(problems + notes)
    if all("not run" in n for n in notes):
        return SKIPPED, "\n".join(notes)
    return PASS, "; ".join(notes)


_VMAP_BATCH = 3


def _check_vmap(ctx: _Context):
    from torch.func import vjp, vmap

    base = ctx.args.make(torch.float64, grad=False)
    diff = ctx.args.diff
    batched = [torch.stack([base[i] * (1 + 0.05 * b) for b in range(_VMAP_BATCH)]) for i in diff]

    def merged(diff_values):
        call_args = list(base)
        for i, value in zip(diff, diff_values, strict=True):
            call_args[i] = value
        return call_args

    def one(*diff_values):
        def f(*d):
            outs = ctx.outputs(ctx.call(ctx.fn, merged(d)))
            return tuple(outs)

        outs, pullback = vjp(f, *diff_values)
        return outs, pullback(tuple(ctx.cotangents(list(outs))))

    try:
        outs_b, grads_b = vmap(one, randomness="same")(*batched)
    except Exception as exc:
        text = str(exc)
        if "generate_vmap_rule" in text or "vmap staticmethod" in text or "setup_context" in text:
            return SKIPPED, (
                "fn's autograd.Function does not support vmap: set `generate_vmap_rule = True` and move the "
                "ctx code of forward into a `setup_context` staticmethod, or define `vmap`"
            )
        return FAIL, "vmap raises: " + _explain_exception(exc, ctx)
    problems = []
    for b in range(_VMAP_BATCH):
        outs, grads = one(*[x[b] for x in batched])
        problems += _compare_all(
            ctx,
            [o[b] for o in outs_b],
            [g[b] for g in grads_b],
            list(outs),
            list(grads),
            1e-9,
            1e-12,
            f"vmap (batch element {b})",
        )
    if problems:
        return FAIL, "\n".join(problems)
    return PASS, f"vmap over a batch of {_VMAP_BATCH} equals a loop (outputs and gradients)"


def _check_compile(ctx: _Context):
    outs, grads = ctx.value_and_grads(ctx.args.make(torch.float64))
    compiled = torch.compile(ctx.fn, backend=ctx.backend)
    outs2, grads2 = ctx.value_and_grads(ctx.args.make(torch.float64), fn=compiled)
    problems = _compare_all(ctx, outs2, grads2, outs, grads, 1e-6, 1e-9, f"torch.compile(backend={ctx.backend!r})")
    if problems:
        return FAIL, "\n".join(problems)
    return PASS, f"torch.compile(backend={ctx.backend!r}) gives the same outputs and gradients as eager"


def _check_mutation(ctx: _Context):
    call_args = ctx.args.make(torch.float64)
    tensors = [(i, a) for i, a in enumerate(call_args) if isinstance(a, torch.Tensor)]
    before = [(i, a.detach().clone(), a._version) for i, a in tensors]

    def changed(stage):
        found = []
        for (i, a), (_, old, version) in zip(tensors, before, strict=True):
            same = torch.equal(a.detach(), old) or (old.is_floating_point() and bool(torch.isnan(old).any()))
            if a._version != version or not same:
                delta = _max_abs(a.detach().double() - old.double()) if a.shape == old.shape else math.nan
                found.append(f"{ctx.args.label(i)} is modified in place by {stage} (max change {delta:.3g})")
        return found

    outs = ctx.outputs(ctx.call(ctx.fn, call_args))
    problems = changed("forward")
    if not problems:
        total = sum((o * c).sum() for o, c in zip(outs, ctx.cotangents(outs), strict=True) if o.requires_grad)
        if isinstance(total, torch.Tensor):
            total.backward()
        problems = changed("backward")
    if problems:
        fix = (
            "Fix: compute out of place (x = x.clone() first, or x * 2 instead of x.mul_(2)); a forward that "
            "must modify its input in place calls ctx.mark_dirty(x) and returns x, so autograd knows; "
            "backward must never modify grad_output or saved tensors in place"
        )
        return FAIL, "\n".join([*problems, fix])
    return PASS, "no input is modified by forward or backward"


def _check_determinism(ctx: _Context):
    call_args = ctx.args.make(torch.float64, grad=False)
    first = ctx.outputs(ctx.call(ctx.fn, call_args))
    second = ctx.outputs(ctx.call(ctx.fn, call_args))
    for k, (a, b) in enumerate(zip(first, second, strict=True)):
        same = torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))
        if not same:
            return FAIL, (
                f"output {k} differs between two calls after torch.manual_seed({ctx.seed}) "
                f"(max |difference| {_max_abs(a - b):.3g}): fn draws randomness that the global seed does not "
                f"control (pass it a torch.Generator), or runs a nondeterministic kernel"
            )
    return PASS, f"two calls after torch.manual_seed({ctx.seed}) give bit-identical outputs"


_CHECK_FUNCTIONS: dict[str, Callable[[_Context], tuple[str, str]]] = {
    "gradcheck": _check_gradcheck,
    "gradgradcheck": _check_gradgradcheck,
    "surrogate": _check_surrogate,
    "needs_input_grad": _check_needs_input_grad,
    "save_for_backward": _check_save_for_backward,
    "non_contiguous": _check_non_contiguous,
    "dtypes": _check_dtypes,
    "vmap": _check_vmap,
    "compile": _check_compile,
    "mutation": _check_mutation,
    "determinism": _check_determinism,
}

CHECKS: tuple[str, ...] = tuple(_CHECK_FUNCTIONS)
"""The names of the checks, in the order they run and are reported."""


def _select_checks(api: str, checks) -> tuple[str, ...]:
    if isinstance(checks, str) or not isinstance(checks, Iterable):
        raise v.ArgumentTypeError(
            f"{api}: checks must be a list of check names (got {v.describe(checks)}); for one check pass [{checks!r}]"
        )
    chosen = [v.choice(api, "checks", name, CHECKS) for name in checks]
    return tuple(name for name in CHECKS if name in chosen)
