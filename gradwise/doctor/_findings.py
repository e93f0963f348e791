"""Finding: what is wrong, where in the user's code, which parameters, and the fix."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

KINDS: tuple[str, ...] = (
    "graph-break",
    "unused-parameter",
    "zero-gradient",
    "loss-input",
    "stale-graph",
    "requires-grad-bandaid",
    "inplace-modification",
    "missing-zero-grad",
    "parameter-not-optimized",
)
"""Every kind of finding the doctor reports."""

SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class Finding:
    """One problem the doctor found.

    Attributes:
        kind: one of :data:`KINDS`.
        severity: ``"error"``, ``"warning"`` or ``"info"``.
        message: what is wrong, in a sentence or two.
        file: the user's source file (never a gradwise or torch frame), or None if unknown.
        line: the line in ``file`` (the cutting operation, the loss call, ...), or None.
        parameters: qualified names of the parameters affected (``encoder.0.weight``).
        fix: a concrete suggestion.
    """

    kind: str
    severity: str
    message: str
    file: str | None
    line: int | None
    parameters: tuple[str, ...] = field(default_factory=tuple)
    fix: str = ""

    def to_dict(self) -> dict:
        out = asdict(self)
        out["parameters"] = list(self.parameters)
        return out

    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.file else "(location unknown)"
