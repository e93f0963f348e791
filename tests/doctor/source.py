"""Lines of a test file, found by a marker comment, for the findings' expected lines."""

from __future__ import annotations

import sys

__all__ = ["line_of"]


def line_of(marker: str) -> int:
    """The line of the calling test file that ends with the comment ``# marker``."""
    file = sys._getframe(1).f_code.co_filename
    with open(file, encoding="utf-8") as fh:
        for number, text in enumerate(fh, 1):
            if text.rstrip().endswith(f"# {marker}"):
                return number
    raise AssertionError(f"no line of {file} ends with '# {marker}'")
