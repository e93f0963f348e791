"""The doctor's test corpus: the scripts in ``examples/doctor`` and the findings they declare.

Each script's expected findings are the ``# doctor: <kind>[, <kind>...]`` comments on the
lines the doctor must point at, in the script itself or in a helper module it imports from
``examples/doctor/helpers``. ``examples/doctor/README.md`` describes the conventions.

Example:
    >>> from tests.doctor.corpus import load_corpus
    >>> scripts = load_corpus()
    >>> vq = next(s for s in scripts if s.path.name == "broken_graph_break_vq_argmin.py")
    >>> vq.expected
    [('graph-break', 'examples/doctor/broken_graph_break_vq_argmin.py', 25)]
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

from gradwise.doctor import KINDS  # the kinds markers may name: the doctor's own list

__all__ = ["CORPUS_DIR", "HELPERS_DIR", "KINDS", "MARKER", "REPO_ROOT", "Script", "load_corpus", "parse_markers"]

REPO_ROOT = Path(__file__).resolve().parents[2]
CORPUS_DIR = REPO_ROOT / "examples" / "doctor"
HELPERS_DIR = CORPUS_DIR / "helpers"


MARKER = "# doctor:"
EXPECT_EXIT = "# expect-exit:"
_MARKER_RE = re.compile(r"#\s*doctor:(?P<kinds>.*)$")


@dataclass(frozen=True)
class Script:
    """One corpus script.

    Attributes:
        path: absolute path of the script.
        expected: the findings the doctor must report, as ``(kind, file, line)`` with
            ``file`` relative to the repository root (POSIX separators) and ``line`` 1-based,
            sorted by file, line and kind.
        clean: whether the script is a ``clean_*`` script (no finding expected).
        expect_exit: ``"<ExceptionType>: <start of the message>"`` when running the script
            plainly must raise, else ``None``.
        helpers: absolute paths of the ``examples/doctor/helpers`` modules it imports.
    """

    path: Path
    expected: list[tuple[str, str, int]]
    clean: bool
    expect_exit: str | None
    helpers: list[Path] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.stem


def parse_markers(path: Path) -> list[tuple[str, str, int]]:
    """Return the ``(kind, file, line)`` markers written in ``path``.

    Only real comments count (a ``# doctor:`` inside a string is not a marker). Kinds are
    returned as written; checking them against ``KINDS`` is left to the caller.
    """
    text = path.read_text()
    relative = path.resolve().relative_to(REPO_ROOT).as_posix()
    found = []
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type != tokenize.COMMENT:
            continue
        match = _MARKER_RE.match(token.string)
        if match is None:
            continue
        for kind in match.group("kinds").split(","):
            found.append((kind.strip(), relative, token.start[0]))
    return found


def _imported_helpers(tree: ast.Module) -> list[Path]:
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return sorted(
        HELPERS_DIR.joinpath(*module.split(".")[1:]).with_suffix(".py")
        for module in modules
        if module.startswith("helpers.")
    )


def _expect_exit(text: str, tree: ast.Module) -> str | None:
    body = tree.body
    if not (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)):
        return None
    lines = text.splitlines()
    after_docstring = body[0].end_lineno  # 1-based line of the docstring's end == 0-based index of the next line
    if after_docstring < len(lines) and lines[after_docstring].startswith(EXPECT_EXIT):
        return lines[after_docstring][len(EXPECT_EXIT) :].strip()
    return None


def load_corpus() -> list[Script]:
    """Load every ``examples/doctor/*.py`` script, sorted by file name."""
    scripts = []
    for path in sorted(CORPUS_DIR.glob("*.py")):
        text = path.read_text()
        tree = ast.parse(text, filename=str(path))
        helpers = _imported_helpers(tree)
        expected = parse_markers(path)
        for helper in helpers:
            if helper.exists():
                expected += parse_markers(helper)
        scripts.append(
            Script(
                path=path,
                expected=sorted(expected, key=lambda finding: (finding[1], finding[2], finding[0])),
                clean=path.name.startswith("clean_"),
                expect_exit=_expect_exit(text, tree),
                helpers=helpers,
            )
        )
    return scripts
