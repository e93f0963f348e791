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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradwise", description="Gradients through hard decisions, and a doctor for gradients that do not flow."
    )
    parser.add_argument("--version", action="version", version=f"gradwise {gradwise.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("estimators", help="list the gradient estimators of gradwise.ops")
    p.set_defaults(run=_estimators)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return 2
    return args.run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
