"""The exceptions gradwise raises.

Every error gradwise raises is a :class:`GradwiseError`. The subclasses also derive
from the builtin a user would catch anyway (``ValueError``, ``TypeError``, ...), so
``except ValueError`` keeps working around gradwise calls.

Messages name the function, the argument, what was expected and what was received::

    gumbel_softmax: tau must be > 0 (got -1.0)
"""

from __future__ import annotations

__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "FunctionCheckError",
    "GradwiseError",
    "GradwiseWarning",
    "MissingDependencyError",
    "UnsupportedError",
]


class GradwiseError(Exception):
    """Base class of every exception raised by gradwise."""


class ArgumentError(GradwiseError, ValueError):
    """An argument has the right type but a value, shape or size that is not allowed."""


class ArgumentTypeError(GradwiseError, TypeError):
    """An argument has the wrong type (gradwise never coerces silently)."""


class UnsupportedError(GradwiseError, NotImplementedError):
    """A valid combination of arguments that gradwise does not support (yet)."""


class MissingDependencyError(GradwiseError, ImportError):
    """An optional dependency (an extra such as ``gradwise[viz]``) is not installed."""


class FunctionCheckError(GradwiseError, AssertionError):
    """``gradwise.testing``: a custom autograd Function failed a check (the message is the report)."""


class GradwiseWarning(UserWarning):
    """A warning from gradwise: the code runs and computes what it says, but something is
    probably not what was meant (a redundant ``log_softmax`` before ``cross_entropy``)."""
