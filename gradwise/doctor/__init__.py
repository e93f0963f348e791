"""The doctor: which parameter lost its gradient, the line that cut it, and the fix.

``with gw.doctor.watch() as dr:`` around training steps, then ``dr.findings`` and
``dr.report()``; or ``gradwise doctor train.py`` on a script, unmodified. Over a long run,
``with gw.doctor.monitor(model, opt) as mon:`` records gradient health at a few norms per
step (``gradwise monitor train.py --html report.html``).
"""

from gradwise.doctor._checks import KINDS
from gradwise.doctor._findings import SEVERITIES, Finding
from gradwise.doctor._monitor import GradientAlert, GradientMonitor, monitor, read_jsonl
from gradwise.doctor._report import format_report
from gradwise.doctor._watch import Doctor, StopWatching, diagnose, watch

__all__ = [
    "KINDS",
    "SEVERITIES",
    "Doctor",
    "Finding",
    "GradientAlert",
    "GradientMonitor",
    "StopWatching",
    "diagnose",
    "format_report",
    "monitor",
    "read_jsonl",
    "watch",
]
