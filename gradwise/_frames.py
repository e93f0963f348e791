"""Which stack frames are the user's: not torch, not gradwise, not the interpreter's own
import and context machinery. Used to point error reports and findings at user code."""

from __future__ import annotations

import os
from pathlib import Path

import torch

_LIBRARY_ROOTS = tuple(
    str(Path(p).resolve()) + os.sep for p in (Path(torch.__file__).parent, Path(__file__).resolve().parent)
)
_SKIP_FILES = ("<frozen ", "runpy.py", "contextlib.py", "<string>")
_cache: dict[str, bool] = {}


def is_library(filename: str) -> bool:
    """Whether a frame's ``co_filename`` belongs to torch, gradwise or the interpreter's machinery."""
    cached = _cache.get(filename)
    if cached is None:
        resolved = filename if filename.startswith("<") else str(Path(filename).resolve())
        cached = resolved.startswith(_LIBRARY_ROOTS) or any(s in filename for s in _SKIP_FILES)
        _cache[filename] = cached
    return cached
