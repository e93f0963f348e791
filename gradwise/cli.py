"""The ``gradwise`` command line."""

from __future__ import annotations

import argparse
import sys

import gradwise


def _estimators(args: argparse.Namespace) -> int:
    from gradwise.ops._estimators import ESTIMATORS, get

    for name in ESTIMATORS:
        e = get(name)
        where = "sampling ops only" if e.sampling_only else "every op"
        print(f"{name:<11} {e.summary} [{where}]")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    import os
    import runpy
    import traceback

    from gradwise.doctor import watch
    from gradwise.doctor._report import format_report, to_json

    script = args.script
    if not os.path.isfile(script):
        print(f"gradwise doctor: no such script: {script}", file=sys.stderr)
        return 2
    if args.steps < 1:
        print(f"gradwise doctor: --steps must be >= 1 (got {args.steps})", file=sys.stderr)
        return 2
    script_args = args.script_args
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [script, *script_args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    crashed = None
    try:
        with watch(steps=args.steps, stop=not args.run_to_end) as doctor:
            try:
                runpy.run_path(script, run_name="__main__")
            except SystemExit as exc:
                if exc.code not in (None, 0):
                    crashed = f"the script exited with status {exc.code}"
            except Exception as exc:
                from gradwise.doctor import StopWatching

                if isinstance(exc, StopWatching):
                    raise
                crashed = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    findings = doctor.findings
    print(format_report(findings, steps=doctor.steps), end="")
    if crashed:
        explained = any(f.kind in ("stale-graph", "inplace-modification") for f in findings)
        print(f"\nThe script raised: {crashed}" + ("\n(explained above)" if explained else ""))
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(to_json(findings))
    return 1 if crashed or any(f.severity == "error" for f in findings) else 0


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
            "without error findings, 1 with error findings or when the script itself fails, 2 for usage errors."
        ),
    )
    p.add_argument("script", metavar="SCRIPT", help="the training script")
    p.add_argument("--steps", type=int, default=5, help="training steps to watch (default: 5)")
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
