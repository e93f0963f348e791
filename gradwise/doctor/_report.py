"""The doctor's report: readable text, and JSON for tools."""

from __future__ import annotations

import json
from collections.abc import Sequence

from gradwise.doctor._findings import Finding

_ORDER = {"error": 0, "warning": 1, "info": 2}


def format_report(findings: Sequence[Finding], *, steps: int | None = None) -> str:
    """Findings grouped by severity, each with where, what, which parameters and the fix."""
    head = f"gradwise doctor: {len(findings)} finding(s)" + (
        f" in {steps} training step(s)" if steps is not None else ""
    )
    if not findings:
        return head + "\nNo problem found in the gradient flow of the watched steps."
    lines = [head, ""]
    for f in sorted(findings, key=lambda f: (_ORDER.get(f.severity, 3), f.file or "", f.line or 0)):
        lines.append(f"{f.severity.upper()} {f.kind} at {f.where()}")
        lines.append(f"  {f.message}")
        if f.parameters:
            shown = ", ".join(f.parameters[:8]) + (f" (+{len(f.parameters) - 8} more)" if len(f.parameters) > 8 else "")
            lines.append(f"  parameters: {shown}")
        if f.fix:
            lines.append(f"  fix: {f.fix}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def to_json(findings: Sequence[Finding]) -> str:
    return json.dumps({"findings": [f.to_dict() for f in findings]}, indent=2)
