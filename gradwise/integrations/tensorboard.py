"""The monitor's records as TensorBoard scalars and text, through a ``SummaryWriter``.

Tags: ``gradwise/grad_norm/<param>``, ``gradwise/param_norm/<param>``,
``gradwise/update_ratio/<param>``, ``gradwise/nonfinite/<param>`` (the count of NaN/Inf
gradient elements: TensorBoard's charts drop non-finite points, the count keeps them
visible), ``gradwise/dead_fraction/<module>``, ``gradwise/saturated_fraction/<module>``,
``gradwise/grad_norm_total``, ``gradwise/loss``; findings as markdown text under
``gradwise/findings``. Only the writer's ``add_scalar`` and ``add_text`` are called, so
any object with those methods works (the writer needs the ``tensorboard`` package).
"""

from __future__ import annotations

from typing import Any

__all__ = ["write_findings", "write_record"]


def write_record(writer: Any, record: dict) -> None:
    step = record["step"]
    scalar = writer.add_scalar
    for name, v in record["params"].items():
        for key in ("grad_norm", "param_norm", "update_ratio"):
            if v.get(key) is not None:
                scalar(f"gradwise/{key}/{name}", v[key], step)
        scalar(f"gradwise/nonfinite/{name}", v.get("nonfinite", 0), step)
    for name, v in record["modules"].items():
        for key in ("dead_fraction", "saturated_fraction"):
            if v.get(key) is not None:
                scalar(f"gradwise/{key}/{name}", v[key], step)
    if record.get("grad_norm_total") is not None:
        scalar("gradwise/grad_norm_total", record["grad_norm_total"], step)
    if record.get("loss") is not None:
        scalar("gradwise/loss", record["loss"], step)
    if record.get("findings"):
        write_findings(writer, record["findings"], step)


def write_findings(writer: Any, findings: list[dict], step: int) -> None:
    for f in findings:
        where = f" ({f['file']}:{f['line']})" if f.get("file") else ""
        text = f"**{f['kind']}** ({f['severity']}) at step {f.get('step')}{where}: {f['message']}"
        if f.get("fix"):
            text += f"\n\nFix: {f['fix']}"
        writer.add_text("gradwise/findings", text, step)
