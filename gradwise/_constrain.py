"""Constrained parameters: stored unconstrained, mapped through a bijection in forward.

Built on ``torch.nn.utils.parametrize`` (the mechanism) and
``torch.distributions.constraints`` / ``biject_to`` (the vocabulary).
"""

from __future__ import annotations

import difflib
import re
from typing import Any

import torch
from torch import nn
from torch.distributions import constraints as C
from torch.distributions import transforms as T
from torch.distributions.constraint_registry import biject_to, transform_to
from torch.nn.utils import parametrize

from gradwise import _validate as v
from gradwise.errors import ArgumentError, ArgumentTypeError, UnsupportedError

# transform_to's maps that are bijections onto the support from a subspace of the
# parameter's shape (the lower triangle), which biject_to does not list
_TRIANGULAR = (C.lower_cholesky, C.positive_definite)

# closest supported constraint for the constraints that have no bijection
_NEAREST = {
    "boolean": "unit_interval",
    "integer_interval": "interval(a, b)",
    "lower_triangular": "lower_cholesky",
    "nonnegative_integer": "nonnegative",
    "positive_integer": "positive",
    "one_hot": "simplex",
    "positive_semidefinite": "positive_definite",
    "square": "lower_cholesky",
    "symmetric": "positive_definite",
}


def _has_bijection(constraint: C.Constraint) -> bool:
    try:
        biject_to(constraint)
    except NotImplementedError:
        return constraint in _TRIANGULAR
    return True


ALIASES: dict[str, C.Constraint | str] = {
    name: value
    for name, value in sorted(vars(C).items())
    if isinstance(value, C.Constraint) and not name.startswith("_") and _has_bijection(value)
}
ALIASES["orthogonal"] = "orthogonal"


class _Bijection(nn.Module):
    """The parametrization: ``forward`` maps the stored tensor onto the support,
    ``right_inverse`` maps a constrained value back."""

    def __init__(self, transform: T.Transform, constraint: C.Constraint, label: str, owner: str = "the parameter"):
        super().__init__()
        self.transform = transform
        self.constraint = constraint
        self.label = label
        self.owner = owner

    def forward(self, unconstrained: torch.Tensor) -> torch.Tensor:
        return self.transform(unconstrained)

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        """``module.name = value``: the value is checked as ``init=`` is (a value outside the
        support, or on the boundary of an open one, would give NaN or a parameter stuck at
        gradient 0)."""
        return _unconstrained(
            "constrain", self.constraint, self.label, self.transform, value, f"the value assigned to {self.owner}"
        )

    def extra_repr(self) -> str:
        return self.label


def _label(constraint: C.Constraint) -> str:
    for name, value in ALIASES.items():
        if value is constraint:
            return name
    return repr(constraint)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name.lstrip("_")).lower()


class Constrain:
    """``gw.constrain(module, name, constraint, *, init=None)``: keep ``module.<name>`` in a support.

    Registers a parametrization (``torch.nn.utils.parametrize``) so that reading
    ``module.<name>`` returns the constrained value, recomputed on every read (cached
    inside ``with gw.constrain.cached():``), while the optimizer sees and updates the
    unconstrained tensor ``module.parametrizations.<name>.original``. The transform is
    applied in ``forward``, so every ``backward`` builds on a fresh graph.

    Args:
        module: the module that owns the parameter.
        name: the parameter's attribute name on ``module`` (``"weight"``, ``"p"``).
        constraint: a ``torch.distributions.constraints`` object with a bijection
            (``unit_interval``, ``positive``, ``interval(a, b)``, ``greater_than(a)``,
            ``simplex``, ``corr_cholesky``, ``lower_cholesky``, ``positive_definite``, ...),
            or a string alias from :attr:`ALIASES`, or ``"orthogonal"`` (PyTorch's
            orthogonal parametrization).
        init: the initial constrained value, a tensor or a float broadcast to the
            parameter's shape. Without it, the parameter's current value must lie in the
            support and is kept.

    Returns:
        ``module``, for chaining.

    Example:
        >>> import gradwise as gw
        >>> layer = torch.nn.Module()
        >>> layer.p = torch.nn.Parameter(torch.zeros(3))
        >>> _ = gw.constrain(layer, "p", "unit_interval", init=0.25)
        >>> layer.p
        tensor([0.2500, 0.2500, 0.2500], grad_fn=<ClampBackward1>)
        >>> layer.parametrizations.p.original  # what the optimizer updates
        Parameter containing:
        tensor([-1.0986, -1.0986, -1.0986], requires_grad=True)
        >>> gw.constrain.values(layer)
        {'p': tensor([0.2500, 0.2500, 0.2500])}
    """

    ALIASES = ALIASES
    cached = staticmethod(parametrize.cached)

    def __call__(self, module: nn.Module, name: str, constraint: Any, *, init: Any = None) -> nn.Module:
        api = "constrain"
        if not isinstance(module, nn.Module):
            raise ArgumentTypeError(f"{api}: module must be a torch.nn.Module (got {type(module).__name__})")
        if not isinstance(name, str):
            raise ArgumentTypeError(f"{api}: name must be a str (got {type(name).__name__}: {v.describe(name)})")
        if parametrize.is_parametrized(module, name):
            raise ArgumentError(
                f"{api}: {type(module).__name__}.{name} is already parametrized; call "
                f"gw.constrain.unconstrain(module, {name!r}) first"
            )
        param = module._parameters.get(name)
        if not isinstance(param, nn.Parameter):
            found = (
                "a buffer"
                if name in module._buffers
                else "no parameter"
                if not hasattr(module, name)
                else (type(getattr(module, name)).__name__)
            )
            raise ArgumentError(f"{api}: {type(module).__name__}.{name} must be an nn.Parameter (got {found})")
        constraint = _resolve(api, constraint)
        if init is not None:
            init = _broadcast_init(api, init, param)
        if constraint == "orthogonal":
            return _orthogonal(api, module, name, param, init)

        label = _label(constraint)
        transform = _transform(constraint)
        value = init if init is not None else param.detach()
        what = "init" if init is not None else f"the current value of {name}"
        _unconstrained(api, constraint, label, transform, value, what)
        if init is not None:
            with torch.no_grad():
                param.copy_(init)
        owner = f"{type(module).__name__}.{name}"
        parametrize.register_parametrization(module, name, _Bijection(transform, constraint, label, owner))
        return module

    def values(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """Every constrained parameter's current value (detached), by qualified name.

        For logging (``writer.add_scalar``) or printing; includes submodules
        (``"encoder.0.scale"``) and parameters constrained with ``"orthogonal"``.
        """
        if not isinstance(module, nn.Module):
            raise ArgumentTypeError(f"constrain.values: module must be a torch.nn.Module (got {type(module).__name__})")
        out = {}
        for prefix, sub in module.named_modules():
            if not parametrize.is_parametrized(sub):
                continue
            for name, plist in sub.parametrizations.items():
                if _is_ours(plist):
                    with torch.no_grad():
                        out[f"{prefix}.{name}" if prefix else name] = getattr(sub, name).detach().clone()
        return out

    def unconstrain(self, module: nn.Module, name: str) -> nn.Module:
        """Remove the constraint from ``module.<name>``, keeping its current constrained value
        as a plain ``nn.Parameter``."""
        api = "constrain.unconstrain"
        if not isinstance(module, nn.Module):
            raise ArgumentTypeError(f"{api}: module must be a torch.nn.Module (got {type(module).__name__})")
        if not parametrize.is_parametrized(module, name) or not _is_ours(module.parametrizations[name]):
            raise ArgumentError(f"{api}: {type(module).__name__}.{name} is not constrained by gw.constrain")
        parametrize.remove_parametrizations(module, name, leave_parametrized=True)
        return module

    def __repr__(self) -> str:
        return "gradwise.constrain"


def _is_ours(plist) -> bool:
    return len(plist) == 1 and (isinstance(plist[0], _Bijection) or getattr(plist, "_gradwise_orthogonal", False))


def _resolve(api: str, constraint: Any) -> C.Constraint | str:
    if isinstance(constraint, str):
        if constraint not in ALIASES:
            valid = ", ".join(repr(a) for a in ALIASES)
            near = [a for a in ALIASES if a.startswith(constraint)] or difflib.get_close_matches(
                constraint, list(ALIASES), n=1
            )
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ArgumentError(
                f"{api}: constraint must be one of {valid}, or a torch.distributions.constraints object "
                f"(got {constraint!r}){hint}"
            )
        return ALIASES[constraint]
    if not isinstance(constraint, C.Constraint):
        raise ArgumentTypeError(
            f"{api}: constraint must be a torch.distributions.constraints object or a str alias "
            f"(got {type(constraint).__name__}: {v.describe(constraint)})"
        )
    if not _has_bijection(constraint):
        kind = _snake(type(constraint).__name__)
        nearest = _NEAREST.get(kind) or next(iter(difflib.get_close_matches(kind, list(ALIASES), n=1)), None)
        reason = " (a discrete constraint)" if constraint.is_discrete else ""
        raise UnsupportedError(
            f"{api}: torch.distributions.biject_to has no bijection onto {constraint}{reason}, so it cannot "
            f"constrain a parameter" + (f"; the nearest supported constraint is {nearest}" if nearest else "")
        )
    return constraint


def _transform(constraint: C.Constraint) -> T.Transform:
    if constraint in _TRIANGULAR:
        return transform_to(constraint)
    return biject_to(constraint)


def _broadcast_init(api: str, init: Any, param: nn.Parameter) -> torch.Tensor:
    if isinstance(init, bool) or not isinstance(init, int | float | torch.Tensor):
        raise ArgumentTypeError(f"{api}: init must be a tensor or a float (got {type(init).__name__})")
    if isinstance(init, torch.Tensor) and not init.is_floating_point():
        raise ArgumentTypeError(f"{api}: init must have a floating dtype (got {init.dtype})")
    init = torch.as_tensor(init, dtype=param.dtype, device=param.device)
    try:
        return init.expand(param.shape).clone()
    except RuntimeError:
        raise ArgumentError(
            f"{api}: init of shape {tuple(init.shape)} does not broadcast to the parameter's shape {tuple(param.shape)}"
        ) from None


def _first(mask: torch.Tensor, value: torch.Tensor) -> str:
    """'name[i, j] = v' for the first True in mask (mask may be per element or per event)."""
    index = tuple(int(i) for i in mask.nonzero()[0]) if mask.dim() else ()
    at = "[" + ", ".join(map(str, index)) + "]" if index else ""
    picked = value[index] if index else value
    text = f"{picked.item():.6g}" if picked.numel() == 1 else str(picked.detach().cpu().tolist())
    return f"at {at or 'the value'}: {text}"


def _check_support(api: str, constraint: C.Constraint, label: str, value: torch.Tensor, what: str) -> None:
    try:
        inside = constraint.check(value)
    except (RuntimeError, IndexError, ValueError) as exc:
        raise ArgumentError(
            f"{api}: {what} of shape {tuple(value.shape)} cannot be checked against {label}: {exc}"
        ) from exc
    if not bool(torch.as_tensor(inside).all()):
        raise ArgumentError(f"{api}: {what} lies outside the support of {label} {_first(~inside, value)}")


def _on_boundary(constraint: C.Constraint, value: torch.Tensor) -> torch.Tensor | None:
    """Where ``value`` lies on the boundary of an open support (the bijection reaches it only at
    infinity, where its derivative is 0): a bound of an interval or a half-line, a zero of a
    simplex. None when the constraint has no such boundary."""
    base = constraint
    while isinstance(base, C.independent):
        base = base.base_constraint
    if isinstance(base, C._Simplex):
        return value == 0
    bounds = [getattr(base, a) for a in ("lower_bound", "upper_bound") if hasattr(base, a)]
    if not bounds:
        return None
    mask = torch.zeros_like(value, dtype=torch.bool)
    for b in bounds:
        mask |= value == torch.as_tensor(b, dtype=value.dtype, device=value.device)
    return mask


def _unconstrained(
    api: str, constraint: C.Constraint, label: str, transform: T.Transform, value: torch.Tensor, what: str
) -> torch.Tensor:
    """``transform.inv(value)``, after checking that ``value`` lies strictly inside the support."""
    value = value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    _check_support(api, constraint, label, value, what)
    unconstrained = transform.inv(value)
    boundary = _on_boundary(constraint, value)
    if boundary is not None and bool(boundary.any()):
        bad = _first(boundary, value)
    elif not bool(torch.isfinite(unconstrained).all()):
        bad = _first(~torch.isfinite(unconstrained), value)
    else:
        return unconstrained
    raise ArgumentError(
        f"{api}: {what} lies on the boundary of {label} ({bad}): the unconstrained value would be infinite "
        "(or its gradient 0 for ever); pass an init strictly inside the support"
    )


def _orthogonal(api: str, module: nn.Module, name: str, param: nn.Parameter, init) -> nn.Module:
    value = init if init is not None else param.detach()
    if value.dim() < 2:
        raise ArgumentError(f"{api}: 'orthogonal' needs a matrix (got shape {tuple(value.shape)})")
    q = value if value.shape[-2] >= value.shape[-1] else value.mT
    gram = q.mT @ q
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    tol = 1e-4 if value.dtype in (torch.float32, torch.complex64) else 1e-8
    if not torch.allclose(gram, eye.expand_as(gram), atol=tol):
        worst = (gram - eye).abs().max().item()
        raise ArgumentError(
            f"{api}: {'init' if init is not None else 'the current value of ' + name} is not orthogonal "
            f"(max |Q^T Q - I| = {worst:.3g}); pass init=torch.nn.init.orthogonal_(torch.empty(...))"
        )
    with torch.no_grad():
        param.copy_(value)
    torch.nn.utils.parametrizations.orthogonal(module, name)
    module.parametrizations[name]._gradwise_orthogonal = True
    with torch.no_grad():
        setattr(module, name, value)  # orthogonal() does not keep the value it was given
    return module


constrain = Constrain()
