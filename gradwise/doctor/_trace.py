"""Where in the user's code: the first frame outside torch, gradwise and the interpreter's
import machinery."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from gradwise._frames import is_library as _is_library


@dataclass(frozen=True)
class Site:
    """A user source location."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


def user_frame():
    """The innermost frame of user code on the stack (gradwise's own frames are skipped), or None."""
    frame = sys._getframe(1)
    while frame is not None and _is_library(frame.f_code.co_filename):
        frame = frame.f_back
    return frame


def user_site() -> Site | None:
    frame = user_frame()
    return None if frame is None else Site(frame.f_code.co_filename, frame.f_lineno)


def user_stack() -> list[tuple[Site, str]]:
    """Every user frame on the stack, innermost first, with its function's name."""
    out, frame = [], sys._getframe(1)
    while frame is not None:
        if not _is_library(frame.f_code.co_filename):
            out.append((Site(frame.f_code.co_filename, frame.f_lineno), frame.f_code.co_name))
        frame = frame.f_back
    return out
