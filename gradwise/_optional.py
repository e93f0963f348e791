"""Cached probes for optional dependencies, imported only inside the code that needs them."""

from __future__ import annotations

import functools
import importlib
import importlib.util
from types import ModuleType

from gradwise.errors import MissingDependencyError

# module name -> the extra that installs it
EXTRAS = {
    "triton": "triton",
    "matplotlib": "viz",
    "tensorboard": "tensorboard",
    "sklearn": "sklearn",
    "rich": "rich",
    "lightning": "lightning",
}


@functools.cache
def has(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    return importlib.util.find_spec(module) is not None


def require(module: str, *, purpose: str) -> ModuleType:
    """Import an optional dependency, or raise a ``MissingDependencyError`` saying how to get it."""
    if not has(module):
        extra = EXTRAS.get(module, module)
        raise MissingDependencyError(
            f"{purpose} needs the optional package {module!r}, which is not installed.\n"
            f"Install it with: pip install 'gradwise[{extra}]'"
        )
    return importlib.import_module(module)
