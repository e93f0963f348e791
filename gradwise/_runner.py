"""Run a script as ``__main__`` under a context manager, as ``python SCRIPT ARGS`` would.

``sys.argv`` and ``sys.path`` are set as for ``python SCRIPT`` and restored afterwards. The
script's failure is captured, not raised: a :class:`ScriptRun` says how it ended, with
the traceback of the user's own frames. Exceptions that are not ``Exception`` s (a
``BaseException`` used to stop the script on purpose, ``KeyboardInterrupt``) pass through
to the context manager and the caller.
"""

from __future__ import annotations

import os
import runpy
import sys
import traceback
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

from gradwise._frames import is_library

__all__ = ["Failure", "ScriptRun", "run_script", "user_traceback"]

T = TypeVar("T")


@dataclass(frozen=True)
class Failure:
    """An exception raised by the script, or a non-zero ``sys.exit``."""

    type: str
    message: str
    traceback: str  # the user's frames only, formatted like Python's own traceback


@dataclass(frozen=True)
class ScriptRun:
    script: str
    failure: Failure | None


def user_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` reduced to the user's frames (torch, gradwise, runpy left out)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not is_library(f.filename)]
    if not frames:
        return ""
    lines = ["Traceback (most recent call last; your code only):"]
    lines.extend(line.rstrip("\n") for line in traceback.format_list(frames))
    lines.append("".join(traceback.format_exception_only(type(exc), exc)).strip())
    return "\n".join(lines)


def run_script(
    script: str,
    argv: Sequence[str],
    under: Callable[[], AbstractContextManager[T]],
    failed: Callable[[T, BaseException], None] | None = None,
) -> tuple[T, ScriptRun]:
    """Run ``script`` with ``argv`` as ``__main__`` inside ``with under() as value`` and return
    ``(value, ScriptRun)``; ``failed(value, exception)`` is called, still inside the block,
    when the script raises."""
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [script, *argv]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    failure: Failure | None = None
    value: Any = None
    try:
        with under() as value:
            try:
                runpy.run_path(script, run_name="__main__")
            except SystemExit as exc:
                if exc.code not in (None, 0):
                    failure = Failure("SystemExit", f"the script exited with status {exc.code}", "")
            except Exception as exc:
                message = str(exc).strip()
                failure = Failure(type(exc).__name__, message, user_traceback(exc))
                if failed is not None:
                    failed(value, exc)
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    return value, ScriptRun(script, failure)
