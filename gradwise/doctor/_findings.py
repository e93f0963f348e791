"""Finding: what is wrong, where in the user's code, which parameters, the fix, and the figures behind it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class Finding:
    """One problem the doctor found.

    Attributes:
        kind: one of :data:`gradwise.doctor.KINDS`.
        severity: ``"error"``, ``"warning"`` or ``"info"``.
        message: what is wrong, in a sentence or two.
        file: the user's source file (never a gradwise or torch frame), or None if unknown.
        line: the line in ``file`` (the cutting operation, the loss call, ...), or None.
        parameters: qualified names of the parameters affected (``encoder.0.weight``; with
            several models, prefixed by the variable holding each: ``generator.0.weight``).
        fix: a concrete suggestion, written for the situation.
        step: the watched training step (1-based) in which it was first seen, or None for
            what is judged over the whole watch (an unused parameter).
        data: the figures behind it, e.g. ``{"subkind": "probabilities-into-cross-entropy"}``
            for a loss-input finding.
    """

    kind: str
    severity: str
    message: str
    file: str | None
    line: int | None
    parameters: tuple[str, ...] = field(default_factory=tuple)
    fix: str = ""
    step: int | None = None
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def subkind(self) -> str | None:
        """The finer kind where the check gives one (``data["subkind"]``), else None."""
        value = self.data.get("subkind")
        return None if value is None else str(value)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "severity": self.severity,
            "message": self.message,
            "file": self.file,
            "line": self.line,
            "parameters": list(self.parameters),
            "fix": self.fix,
            "step": self.step,
            "data": dict(self.data),
        }

    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.file else "(location unknown)"
