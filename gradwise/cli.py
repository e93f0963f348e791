"""The ``gradwise`` command line."""

from __future__ import annotations

import argparse
import sys

import gradwise

_NUMERICS = 4  # after the watched steps, this many times as many are watched for non-finite values only


def _estimators(args: argparse.Namespace) -> int:
    from gradwise.ops._estimators import ESTIMATORS, get

    for name in ESTIMATORS:
        e = get(name)
        where = "sampling ops only" if e.sampling_only else "every op"
        print(f"{name:<11} {e.summary} [{where}]")
    return 0


def _usage(message: str, command: str = "doctor") -> int:
    print(f"gradwise {command}: {message}", file=sys.stderr)
    return 2


def _doctor(args: argparse.Namespace) -> int:
    import os

    from gradwise._runner import run_script
    from gradwise.doctor import watch
    from gradwise.doctor._report import format_report, to_json

    script = args.script
    if not os.path.isfile(script):
        return _usage(f"no such script: {script}")
    if args.steps < 1:
        return _usage(f"--steps must be >= 1 (got {args.steps})")
    if args.json:
        problem = _path_problem("--json", args.json)
        if problem:
            return _usage(problem)
    doctor, run = run_script(
        script,
        args.script_args,
        lambda: watch(steps=args.steps, stop=not args.run_to_end, numerics_steps=_NUMERICS * args.steps),
        lambda doctor, exc: doctor.crashed(exc),
    )
    findings = doctor.findings
    state = {
        "steps": doctor.watched_steps,
        "numerics_steps": doctor.steps - doctor.watched_steps,
        "stopped": doctor.stopped,
        "crashed": run.failure,
        "internal_errors": doctor.internal_errors,
    }
    print(
        format_report(
            findings,
            script=script,
            autograd_grad_calls=doctor.autograd_grad_calls,
            child_processes=doctor.child_processes,
            **state,
        ),
        end="",
    )
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(to_json(findings, script=script, **state))
    failed = run.failure is not None or doctor.steps == 0 or any(f.severity == "error" for f in findings)
    return 1 if failed else 0


def _path_problem(option: str, path: str) -> str | None:
    """Why ``option PATH`` cannot be written, checked before the script runs (None: it can)."""
    import os

    if os.path.isdir(path):
        return f"{option} must name a file, not a directory (got {path})"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return f"{option}: the directory {parent} does not exist (got {path})"
    if (os.path.exists(path) and not os.access(path, os.W_OK)) or not os.access(parent, os.W_OK):
        return f"{option}: {path} is not writable"
    return None


class _Progress:
    """A one-line live status on a terminal (nothing when stderr is not one), at most 4 times a second."""

    def __init__(self, stream) -> None:
        import time

        self.stream = stream
        self.live = stream.isatty()
        self.clock = time.monotonic
        self.last = -1.0
        self.alerts = 0
        self.shown = False

    def __call__(self, record: dict) -> None:
        self.alerts += len(record.get("findings", ()))
        now = self.clock()
        if not self.live or now - self.last < 0.25:
            return
        self.last = now
        loss = record.get("loss")
        total = record.get("grad_norm_total")
        text = (
            f"gradwise monitor: step {record['step']}"
            + (f" | loss {loss:.4g}" if loss is not None else "")
            + (f" | grad norm {total:.3g}" if total is not None else "")
            + f" | alerts {self.alerts}"
        )
        self.stream.write("\r\x1b[2K" + text)
        self.stream.flush()
        self.shown = True

    def end(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


def _monitor(args: argparse.Namespace) -> int:
    import os

    from gradwise._runner import run_script
    from gradwise.doctor._monitor import GradientAlert, GradientMonitor
    from gradwise.doctor._report import format_monitor

    script = args.script
    if not os.path.isfile(script):
        return _usage(f"no such script: {script}", "monitor")
    if args.every < 1:
        return _usage(f"--every must be >= 1 (got {args.every})", "monitor")
    for option, path in (("--jsonl", args.jsonl), ("--html", args.html)):
        if path:
            problem = _path_problem(option, path)
            if problem:
                return _usage(problem, "monitor")
    if args.tensorboard:
        from gradwise._optional import has

        if not has("tensorboard"):
            return _usage(
                "--tensorboard needs the package 'tensorboard': pip install 'gradwise[tensorboard]'", "monitor"
            )
        if os.path.exists(args.tensorboard) and not os.path.isdir(args.tensorboard):
            return _usage(f"--tensorboard must name a directory (got the file {args.tensorboard})", "monitor")
    progress = _Progress(sys.stderr)
    alerts = "raise" if args.stop_at_alert else True

    def under() -> GradientMonitor:
        mon = GradientMonitor(None, every=args.every, jsonl=args.jsonl, tensorboard=args.tensorboard, alerts=alerts)
        mon.on_record = progress
        return mon

    try:
        mon, run = run_script(script, args.script_args, under)
    except GradientAlert as alert:  # --stop-at-alert: the run stopped at the first alert
        mon, run = alert.monitor, None
    finally:
        progress.end()
    print(format_monitor(mon, script=script, crashed=run.failure if run else None, stopped=run is None), end="")
    if args.html:
        with open(args.html, "w", encoding="utf-8") as fh:
            fh.write(mon.to_html(title=f"gradwise monitor: {os.path.basename(script)}"))
        print(f"HTML report: {args.html}")
    failed = run is None or run.failure is not None or mon.steps == 0
    return 1 if failed or any(f.severity == "error" for f in mon.findings) else 0


def _report(args: argparse.Namespace) -> int:
    import os

    from gradwise.doctor._html import render_html
    from gradwise.doctor._monitor import read_jsonl
    from gradwise.errors import ArgumentError

    problem = _path_problem("-o", args.output)
    if problem:
        return _usage(problem, "report")
    try:
        records = read_jsonl(args.log)
    except ArgumentError as exc:
        return _usage(str(exc).removeprefix("report: "), "report")
    with open(args.output, "w", encoding="utf-8") as fh:
        fh.write(render_html(records, title=f"gradwise monitor: {os.path.basename(args.log)}", source=args.log))
    print(f"{len(records)} recorded step(s) -> {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradwise", description="Gradients through hard decisions, and a doctor for gradients that do not flow."
    )
    parser.add_argument("--version", action="version", version=f"gradwise {gradwise.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("estimators", help="list the gradient estimators of gradwise.ops")
    p.set_defaults(run=_estimators)
    p = sub.add_parser(
        "doctor",
        help="run a training script under the doctor and report gradient-flow problems",
        description=(
            "Usage: gradwise doctor SCRIPT [--steps N] [--json PATH] [--run-to-end] [-- SCRIPT ARGS...]. "
            "Run SCRIPT unmodified as __main__ (with sys.argv set to SCRIPT and SCRIPT ARGS), watch its first "
            "--steps training steps (a step ends at each backward()), then stop it at the next backward() "
            "(default) or, with --run-to-end, let it finish unobserved; print the findings. Exit status: 0 "
            "without error findings, 1 with error findings, when the script itself fails or when no training "
            "step was watched, 2 for usage errors (checked before the script runs)."
        ),
    )
    p.add_argument("script", metavar="SCRIPT", help="the training script")
    p.add_argument(
        "--steps",
        type=int,
        default=5,
        help="training steps to watch (default: 5; extended up to 4 x STEPS while an optimizer has stepped fewer than "
        "twice); then 4 x STEPS more are watched for non-finite values only",
    )
    p.add_argument("--json", metavar="PATH", help="also write the findings as JSON to PATH")
    p.add_argument(
        "--run-to-end",
        action="store_true",
        help="let the script run to its end after the watched steps (default: stop it there)",
    )
    p.set_defaults(run=_doctor, script_args=[])
    p = sub.add_parser(
        "monitor",
        help="run a training script to its end under the gradient monitor (norms, update ratios, dead units, alerts)",
        description=(
            "Usage: gradwise monitor SCRIPT [--every N] [--jsonl PATH] [--html PATH] [--tensorboard DIR] "
            "[--stop-at-alert] [-- SCRIPT ARGS...]. Run SCRIPT unmodified as __main__ to its end; every N-th optimizer "
            "step, record each parameter's gradient norm, weight norm, update ratio and non-finite count, and the "
            "activations' dead and saturated fractions; raise alerts (non-finite, exploding-gradient, "
            "vanishing-gradient, dead-units) with the step where they appeared. A live status line is shown on a "
            "terminal. Exit status: 0 without error alerts, 1 with error alerts, when the script fails or when no "
            "optimizer step was seen, 2 for usage errors (checked before the script runs)."
        ),
    )
    p.add_argument("script", metavar="SCRIPT", help="the training script")
    p.add_argument("--every", type=int, default=1, help="record one optimizer step in N (default: 1)")
    p.add_argument("--jsonl", metavar="PATH", help="write one JSON object per recorded step to PATH")
    p.add_argument("--html", metavar="PATH", help="write the self-contained HTML report to PATH at the end")
    p.add_argument("--tensorboard", metavar="DIR", help="also log the figures to TensorBoard in DIR")
    p.add_argument("--stop-at-alert", action="store_true", help="stop the script at the first alert")
    p.set_defaults(run=_monitor, script_args=[])
    p = sub.add_parser(
        "report",
        help="render a monitor's JSONL log as a self-contained HTML report",
        description="Usage: gradwise report RUN.jsonl -o report.html",
    )
    p.add_argument("log", metavar="RUN.jsonl", help="a log written by gradwise monitor --jsonl or monitor(jsonl=...)")
    p.add_argument("-o", "--output", required=True, metavar="PATH", help="the HTML file to write")
    p.set_defaults(run=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    script_args: list[str] = []
    if argv[:1] in (["doctor"], ["monitor"]) and "--" in argv:  # gradwise doctor SCRIPT [OPTIONS] -- [SCRIPT ARGS]
        cut = argv.index("--")
        argv, script_args = argv[:cut], argv[cut + 1 :]
    args = parser.parse_args(argv)
    if script_args:
        args.script_args = script_args
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return 2
    return args.run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
