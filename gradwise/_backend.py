"""Which implementation a hot path runs: the torch reference or a Triton kernel.

``GRADWISE_KERNELS`` chooses, read at every call (so a test or a user can change it
between calls; under ``torch.compile``, when the graph is compiled):

- ``auto`` (the default): Triton for CUDA tensors when ``triton`` is installed, else torch;
- ``torch``: always the torch reference (``_reference.py`` of each kernel package);
- ``triton``: always Triton. On CPU tensors this needs ``TRITON_INTERPRET=1`` (Triton's
  interpreter runs the kernels with NumPy), which is how the kernels are tested without a GPU.

Kernels are compiled lazily, once per interpreter mode: ``triton.jit`` reads
``TRITON_INTERPRET`` when it decorates, so the kernel sources are plain functions,
decorated on first use (:func:`jit`). Triton's own library is decorated when triton is
imported, so ``TRITON_INTERPRET=1`` must be set before that import (in the process's
environment); set later, the switch says so instead of failing inside the interpreter.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch

from gradwise import _optional
from gradwise.errors import ArgumentError, MissingDependencyError

ENV = "GRADWISE_KERNELS"
MODES = ("auto", "torch", "triton")


def mode() -> str:
    """The value of ``GRADWISE_KERNELS`` (default ``auto``), checked."""
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ArgumentError(
            f"{ENV} must be one of {', '.join(MODES)} (got {os.environ.get(ENV)!r}); unset it for 'auto'"
        )
    return value


def interpret() -> bool:
    """Whether Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def use_triton(*tensors: torch.Tensor) -> bool:
    """Whether the Triton path serves these tensors (all on one device).

    Raises:
        MissingDependencyError: ``GRADWISE_KERNELS=triton`` without triton installed.
        ArgumentError: ``GRADWISE_KERNELS=triton`` on CPU tensors without ``TRITON_INTERPRET=1``,
            or on a device Triton does not run on.
    """
    return _decide(tensors[0].device.type)


@torch.compiler.assume_constant_result
def _decide(device: str) -> bool:
    # a constant to torch.compile: the path is chosen when a graph is compiled
    chosen = mode()
    if chosen == "torch":
        return False
    if chosen == "auto":
        return device == "cuda" and _optional.has("triton") and not interpret()
    if not _optional.has("triton"):
        raise MissingDependencyError(
            f"{ENV}=triton needs the optional package 'triton', which is not installed.\n"
            "Install it with: pip install 'gradwise[triton]' (or set GRADWISE_KERNELS=torch)"
        )
    if device == "cpu" and not interpret():
        raise ArgumentError(
            f"{ENV}=triton on CPU tensors needs TRITON_INTERPRET=1 (Triton's interpreter); "
            "got TRITON_INTERPRET unset. Set it, move the tensors to a GPU, or use GRADWISE_KERNELS=torch"
        )
    if interpret() and _imported_compiled():
        raise ArgumentError(
            "TRITON_INTERPRET=1 was set after triton was imported: Triton fixes the mode at its import. "
            "Set TRITON_INTERPRET=1 before the first import of triton (in the environment of the process)"
        )
    if device not in ("cpu", "cuda"):
        raise ArgumentError(f"{ENV}=triton runs on CUDA (or CPU with TRITON_INTERPRET=1) tensors; got device {device}")
    return True


def _imported_compiled() -> bool:
    """Whether triton was imported outside interpreter mode (its own library is then compiled-only)."""
    import sys

    language = sys.modules.get("triton.language")
    return language is not None and type(language.max).__name__ == "JITFunction"


@functools.cache
def _jit(fn: Callable, interpreted: bool) -> Callable:
    import triton

    return triton.jit(fn)


def jit(fn: Callable) -> Callable:
    """``triton.jit(fn)``, made once per interpreter mode."""
    return _jit(fn, interpret())


def launch(fn: Callable, grid, *args, **meta) -> None:
    """Run the kernel source ``fn`` on ``grid``: jitted for the current mode, through
    ``torch.library.wrap_triton`` where torch has it (so ``torch.compile`` sees the launch).
    In the interpreter, NumPy's floating-point warnings are silenced: masked lanes compute
    ``inf - inf`` and ``log(0)`` by design, and their results are never stored."""
    kernel = jit(fn)
    if interpret():
        from torch._subclasses.fake_tensor import is_fake

        if any(is_fake(a) for a in args if isinstance(a, torch.Tensor)):
            return  # torch.compile tracing with fake tensors: only the output's shape matters
        import numpy

        with numpy.errstate(all="ignore"):
            kernel[grid](*args, **meta)
        return
    wrap = getattr(torch.library, "wrap_triton", None)
    (wrap(kernel) if wrap is not None else kernel)[grid](*args, **meta)
