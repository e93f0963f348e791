"""Which stack frames are the user's: not torch, not gradwise, not the interpreter's own
import and context machinery. Used to point error reports and findings at user code."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

_LIBRARY_ROOTS = tuple(
    str(Path(p).resolve()) + os.sep for p in (Path(torch.__file__).parent, Path(__file__).resolve().parent)
)
_SKIP_FILES = ("<frozen ", "runpy.py", "contextlib.py", "<string>")
_OPTIMIZER_ROOTS = (
    *(str((Path(torch.__file__).parent / sub).resolve()) + os.sep for sub in ("optim", "amp")),
    str((Path(torch.__file__).parent / "nn" / "utils" / "clip_grad.py").resolve()),
)
_cache: dict[str, bool] = {}
_internal_cache: dict[str, bool] = {}


def is_library(filename: str) -> bool:
    """Whether a frame's ``co_filename`` belongs to torch, gradwise or the interpreter's machinery."""
    cached = _cache.get(filename)
    if cached is None:
        resolved = filename if filename.startswith("<") else str(Path(filename).resolve())
        cached = resolved.startswith(_LIBRARY_ROOTS) or any(s in filename for s in _SKIP_FILES)
        _cache[filename] = cached
    return cached


def is_training_internal(filename: str) -> bool:
    """Whether a frame belongs to torch's optimizers, schedulers, gradient scaler or clipping
    utilities: work on parameters and gradients that is not the user's computation."""
    cached = _internal_cache.get(filename)
    if cached is None:
        resolved = filename if filename.startswith("<") else str(Path(filename).resolve())
        cached = resolved.startswith(_OPTIMIZER_ROOTS)
        _internal_cache[filename] = cached
    return cached


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes ``warnings.warn``, called by the caller of this function,
    point at the innermost user frame."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and is_library(frame.f_code.co_filename):
        frame = frame.f_back
        level += 1
    return level
