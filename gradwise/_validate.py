"""Argument checks shared by the public functions.

Each check takes the public function's name (``api``) and the argument's name, so that
every message reads ``api: name must be ... (got ...)``. Checks run in the functional
wrappers, before any work, and never coerce.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any

import torch

from gradwise.errors import ArgumentError, ArgumentTypeError


def describe(value: Any) -> str:
    """A short description of a received value for an error message."""
    if isinstance(value, torch.Tensor):
        return f"Tensor(shape={tuple(value.shape)}, dtype={value.dtype}, device={value.device})"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def floating_tensor(api: str, name: str, value: Any, *, min_ndim: int = 0) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ArgumentTypeError(
            f"{api}: {name} must be a torch.Tensor of floating dtype (got {type(value).__name__}: "
            f"{describe(value)}); convert it with torch.as_tensor(..., dtype=torch.float32) first"
        )
    if not value.is_floating_point():
        raise ArgumentTypeError(
            f"{api}: {name} must have a floating dtype (float16, bfloat16, float32 or float64) "
            f"(got {value.dtype}); call {name}.float() if that is what you mean"
        )
    if value.dim() < min_ndim:
        raise ArgumentError(
            f"{api}: {name} must have at least {min_ndim} dimension(s) (got a {value.dim()}-d "
            f"tensor of shape {tuple(value.shape)})"
        )
    return value


def boolean(api: str, name: str, value: Any) -> bool:
    """A ``bool`` (not a truthy value of another type)."""
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{api}: {name} must be True or False (got {type(value).__name__}: {describe(value)})")
    return value


def integer(api: str, name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """An ``int`` (not ``bool``) with ``low <= value <= high``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{api}: {name} must be an int (got {type(value).__name__}: {describe(value)})")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = (
            f"in [{low}, {high}]"
            if low is not None and high is not None
            else (f">= {low}" if low is not None else f"<= {high}")
        )
        raise ArgumentError(f"{api}: {name} must be {bounds} (got {value})")
    return value


def dim(api: str, value: Any, ndim: int, *, name: str = "dim") -> int:
    """A valid dimension index for a tensor of ``ndim`` dimensions, made non-negative."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{api}: {name} must be an int (got {type(value).__name__}: {describe(value)})")
    if not -ndim <= value < ndim:
        raise ArgumentError(f"{api}: {name} must be in [{-ndim}, {ndim - 1}] for a {ndim}-d tensor (got {value})")
    return int(value) % ndim


def real(api: str, name: str, value: Any, *, positive: bool = False, nonnegative: bool = False) -> float:
    """A finite real number (``int`` or ``float``, not ``bool``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{api}: {name} must be a real number (got {type(value).__name__}: {describe(value)})")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ArgumentError(f"{api}: {name} must be finite (got {value})")
    if positive and not value > 0:
        raise ArgumentError(f"{api}: {name} must be > 0 (got {value})")
    if nonnegative and not value >= 0:
        raise ArgumentError(f"{api}: {name} must be >= 0 (got {value})")
    return value


def choice(api: str, name: str, value: Any, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        valid = ", ".join(repr(c) for c in choices)
        raise ArgumentError(f"{api}: {name} must be one of {valid} (got {describe(value)})")
    return value


def generator(api: str, value: Any, device: torch.device) -> torch.Generator | None:
    if value is None:
        return None
    if not isinstance(value, torch.Generator):
        raise ArgumentTypeError(
            f"{api}: generator must be a torch.Generator or None (got {type(value).__name__}: {describe(value)})"
        )
    if value.device.type != device.type:
        raise ArgumentError(
            f"{api}: generator must live on the device of the input\n"
            f"  generator device: {value.device}\n"
            f"  input device:     {device}\n"
            f"Create it with torch.Generator(device={str(device)!r})."
        )
    return value


def temperature(api: str, value: Any, like: torch.Tensor, dim: int) -> float | torch.Tensor:
    """``tau``: a positive float, or a positive floating tensor that broadcasts to ``like``
    with size 1 along ``dim`` (one temperature per row, or one for all)."""
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise ArgumentTypeError(f"{api}: tau must be a float or a floating tensor (got {value.dtype})")
        if value.device != like.device and value.dim() > 0:
            raise ArgumentError(
                f"{api}: tau must be on the device of the input (tau: {value.device}, input: {like.device})"
            )
        try:
            shape = torch.broadcast_shapes(value.shape, like.shape)
        except RuntimeError:
            shape = None
        offset = like.dim() - value.dim()  # tau's axes align with the trailing axes of `like`
        along_dim = value.shape[dim - offset] if dim - offset >= 0 else 1
        if shape != like.shape or along_dim != 1:
            raise ArgumentError(
                f"{api}: tau must broadcast to the input's shape with size 1 along dim={dim}\n"
                f"  input shape: {tuple(like.shape)}\n"
                f"  tau shape:   {tuple(value.shape)}\n"
                f"For one temperature per row, pass tau.unsqueeze({dim})."
            )
        if not torch.compiler.is_compiling():
            bad_mask = ~((value > 0) & torch.isfinite(value))  # as a float tau must be: positive and finite
            if bool(bad_mask.any()):
                bad = value[bad_mask].flatten()[0].item()
                rule = "> 0" if not bad > 0 else "finite"
                raise ArgumentError(f"{api}: tau must be {rule} everywhere (got an entry equal to {bad})")
        return value
    return real(api, "tau", value, positive=True)
