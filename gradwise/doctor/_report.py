"""The doctor's report: readable text, and JSON for tools."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from gradwise._runner import Failure
from gradwise.doctor._findings import Finding
from gradwise.doctor._trace import source_line

__all__ = ["format_monitor", "format_report", "no_step_reason", "to_json"]

_ORDER = {"error": 0, "warning": 1, "info": 2}
_EXPLAINS_CRASH = ("stale-graph", "inplace-modification", "loss-input", "shape-mismatch")


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def no_step_reason(autograd_grad_calls: int, crashed: Failure | None, child_processes: int = 0) -> str:
    """Why no training step was watched, as likely as it can be said."""
    if child_processes:
        return (
            f"the script started {child_processes} child process(es) (torch.multiprocessing.spawn, a DDP "
            "launcher?) and no backward() ran in this one; the doctor watches only the process it runs in: run "
            "the training in one process under it (e.g. world size 1), or call gw.doctor.watch() in the worker"
        )
    if autograd_grad_calls:
        return (
            f"the script computed gradients with torch.autograd.grad ({autograd_grad_calls} call(s)) and never "
            "called backward(); the doctor watches steps that end in backward()"
        )
    if crashed is not None:
        return f"the script raised {crashed.type} before its first backward()"
    return "no backward() call was reached (the training loop did not run, or it trains by other means)"


def _finding_lines(f: Finding) -> list[str]:
    at = f.where() + (f" (step {f.step})" if f.step is not None else "")
    lines = [f"{f.severity.upper()} {f.kind} at {at}"]
    code = source_line(f.file, f.line)
    if code:
        lines.append(f"  {f.line:>5} | {code}")
    lines.append(f"  {f.message}")
    if f.parameters:
        shown = ", ".join(f.parameters[:8]) + (f" (+{len(f.parameters) - 8} more)" if len(f.parameters) > 8 else "")
        lines.append(f"  parameters: {shown}")
    if f.fix:
        lines.append(f"  fix: {f.fix}")
    lines.append("")
    return lines


def format_monitor(
    mon: Any, *, script: str | None = None, crashed: Failure | None = None, stopped: bool = False
) -> str:
    """A monitor's run in words: the steps seen and recorded, the alerts in step order, the
    last recorded figures, how the run ended, and the monitor's own faults."""
    records = mon.all_history()
    findings = sorted(mon.findings, key=lambda f: f.step if f.step is not None else 0)
    head = f"gradwise monitor: {len(findings)} alert(s) over {mon.steps} optimizer step(s)"
    if records:
        head += f", {len(records)} recorded (every {mon.every})"
    lines = [head]
    if script is not None:
        lines.append(f"script: {script}")
    lines.append("")
    for f in findings:
        lines.extend(_finding_lines(f))
    if mon.steps == 0:
        lines.append(
            "No optimizer step was seen, so nothing was recorded: the monitor records at optimizer.step() (a "
            "hand-written update, or a training in a child process, is not seen)."
        )
        lines.append("")
    elif not findings and crashed is None and not stopped:
        lines.append(f"No alert over the {len(records)} recorded step(s).")
        lines.append("")
    if records:
        last = records[-1]
        loss = last.get("loss")
        lines.append(
            f"Last recorded step {last['step']}: total gradient norm {last.get('grad_norm_total', float('nan')):.4g}"
            + (f", loss {loss:.4g}" if loss is not None else "")
            + "."
        )
        lines.append("")
    if stopped:
        lines.append("The script was stopped at the first alert (--stop-at-alert).")
        lines.append("")
    if crashed is not None:
        lines.append(f"The script raised {crashed.type}: {crashed.message}")
        if crashed.traceback:
            lines.append(crashed.traceback.rstrip())
        lines.append("")
    if mon.internal_errors:
        lines.append(f"The monitor had {len(mon.internal_errors)} internal error(s) (please report this):")
        lines.extend(f"  {e}" for e in mon.internal_errors[:10])
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def format_report(
    findings: Sequence[Finding],
    *,
    steps: int | None = None,
    stopped: bool = False,
    crashed: Failure | None = None,
    internal_errors: Sequence[str] = (),
    numerics_steps: int = 0,
    autograd_grad_calls: int = 0,
    child_processes: int = 0,
    script: str | None = None,
) -> str:
    """Findings grouped by severity, each with where, the source line, what, which
    parameters and the fix; then how the run ended and any fault of the doctor itself."""
    counts = {s: sum(f.severity == s for f in findings) for s in _ORDER}
    head = f"gradwise doctor: {len(findings)} finding(s)"
    if steps is not None:
        head += f" in {steps} watched training step(s)"
    if findings:
        head += " (" + ", ".join(f"{n} {s}(s)" for s, n in counts.items() if n) + ")"
    lines = [head]
    if script is not None:
        lines.append(f"script: {script}")
    if steps is not None and numerics_steps:
        lines.append(f"Then {numerics_steps} more step(s) were watched for non-finite values and loop mistakes only.")
    if steps is not None and stopped:
        lines.append(
            f"The script was stopped at its {_ordinal(steps + numerics_steps + 1)} backward(), after the watched steps."
        )
    lines.append("")
    for f in sorted(findings, key=lambda f: (_ORDER.get(f.severity, 3), f.file or "", f.line or 0)):
        lines.extend(_finding_lines(f))
    if steps == 0:
        lines.append(
            "No training step was watched, so nothing can be said about the gradient flow: "
            + no_step_reason(autograd_grad_calls, crashed, child_processes)
            + "."
        )
        lines.append("")
    elif not findings and crashed is None:
        lines.append(
            f"No problem found in the gradient flow of the {steps if steps is not None else ''} watched step(s)."
        )
        lines.append("")
    if crashed is not None:
        explained = sorted({f.kind for f in findings if f.kind in _EXPLAINS_CRASH})
        lines.append(
            f"The script raised {crashed.type}: {crashed.message}"
            + (f"\n(explained above: {', '.join(explained)})" if explained else "")
        )
        if crashed.traceback:
            lines.append(crashed.traceback.rstrip())
        lines.append("")
    if internal_errors:
        lines.append(
            f"The doctor had {len(internal_errors)} internal error(s); some operations were not analysed "
            "(please report this):"
        )
        lines.extend(f"  {e}" for e in internal_errors[:10])
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def to_json(
    findings: Sequence[Finding],
    *,
    version: str | None = None,
    script: str | None = None,
    steps: int | None = None,
    stopped: bool = False,
    crashed: Failure | None = None,
    internal_errors: Sequence[str] = (),
    numerics_steps: int = 0,
) -> str:
    """``{"version", "script", "steps", "numerics_steps", "stopped", "crashed", "internal_errors",
    "findings"}``."""
    if version is None:
        from gradwise import __version__ as version
    out: dict[str, Any] = {
        "version": version,
        "script": script,
        "steps": steps,
        "numerics_steps": numerics_steps,
        "stopped": stopped,
        "crashed": None if crashed is None else asdict(crashed),
        "internal_errors": list(internal_errors),
        "findings": [f.to_dict() for f in findings],
    }
    return json.dumps(out, indent=2)
