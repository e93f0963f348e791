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


def _usage(message: str) -> int:
    print(f"gradwise doctor: {message}", file=sys.stderr)
    return 2


def _json_path_problem(path: str) -> str | None:
    """Why ``--json PATH`` cannot be written, checked before the script runs (None: it can)."""
    import os

    if os.path.isdir(path):
        return f"--json must name a file, not a directory (got {path})"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return f"--json: the directory {parent} does not exist (got {path})"
    if (os.path.exists(path) and not os.access(path, os.W_OK)) or not os.access(parent, os.W_OK):
        return f"--json: {path} is not writable"
    return None


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
        problem = _json_path_problem(args.json)
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    script_args: list[str] = []
    if argv[:1] == ["doctor"] and "--" in argv:  # gradwise doctor SCRIPT [OPTIONS] -- [SCRIPT ARGS]
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
