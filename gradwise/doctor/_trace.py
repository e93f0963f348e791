"""Where in the user's code: source sites of operations, creation sites of parameters, and
the names of the variables that hold models and tensors.

A site is the innermost frame outside torch, gradwise and the interpreter's import
machinery (``gradwise._frames``).
"""

from __future__ import annotations

import ast
import functools
import linecache
import sys
from dataclasses import dataclass
from typing import Any

from torch import nn

from gradwise._frames import is_library, is_training_internal

__all__ = [
    "Site",
    "caller_line",
    "creation_site",
    "enclosing_function",
    "in_reentrant_checkpoint",
    "locate",
    "no_grad_site",
    "source_line",
    "statement_at",
    "user_frame",
    "user_site",
    "user_stack",
    "variable_name",
]


@dataclass(frozen=True)
class Site:
    """A user source location."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


def user_frame():
    """The innermost frame of user code on the stack (gradwise's own frames are skipped), or None."""
    frame = sys._getframe(1)
    while frame is not None and is_library(frame.f_code.co_filename):
        frame = frame.f_back
    return frame


def user_site() -> Site | None:
    frame = user_frame()
    return None if frame is None else Site(frame.f_code.co_filename, frame.f_lineno)


def locate() -> tuple[Site | None, bool]:
    """The innermost user site, and whether torch's training internals (an optimizer, the
    gradient scaler, gradient clipping) lie between it and the caller: their work on
    parameters and gradients is not the user's computation."""
    frame, internal = sys._getframe(1), False
    while frame is not None:
        filename = frame.f_code.co_filename
        if not is_library(filename):
            return Site(filename, frame.f_lineno), internal
        if not internal and is_training_internal(filename):
            internal = True
        frame = frame.f_back
    return None, internal


def user_stack() -> list[tuple[Site, str]]:
    """Every user frame on the stack, innermost first, with its function's name."""
    out, frame = [], sys._getframe(1)
    while frame is not None:
        if not is_library(frame.f_code.co_filename):
            out.append((Site(frame.f_code.co_filename, frame.f_lineno), frame.f_code.co_name))
        frame = frame.f_back
    return out


def source_line(file: str | None, line: int | None) -> str:
    """The stripped text of a source line, or '' when it cannot be read."""
    if not file or not line:
        return ""
    return linecache.getline(file, line).strip()


@functools.lru_cache(maxsize=64)
def _parsed(file: str, size: int) -> ast.Module | None:
    try:
        return ast.parse("".join(linecache.getlines(file)))
    except (SyntaxError, ValueError):
        return None


def _tree(file: str) -> ast.Module | None:
    lines = linecache.getlines(file)
    return _parsed(file, sum(map(len, lines))) if lines else None


def statement_at(site: Site) -> ast.stmt | None:
    """The innermost statement of the user's source that spans ``site``'s line."""
    tree = _tree(site.file)
    best = None
    for node in ast.walk(tree) if tree is not None else ():
        if isinstance(node, ast.stmt) and node.lineno <= site.line <= (node.end_lineno or node.lineno):
            if best is None or node.lineno >= best.lineno:
                best = node
    return best


def enclosing_function(site: Site) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    """The innermost function definition of the user's source that holds ``site``'s line."""
    tree = _tree(site.file)
    functions = [
        n
        for n in (ast.walk(tree) if tree is not None else ())
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.lineno <= site.line <= (n.end_lineno or 0)
    ]
    return max(functions, key=lambda n: n.lineno) if functions else None


def caller_line(site: Site, file: str) -> Site | None:
    """For a ``return`` statement at ``site``, the one line of ``file`` that calls the function
    holding it (a helper called once before the loop), else None."""
    function = enclosing_function(site)
    if function is None or not isinstance(statement_at(site), ast.Return):
        return None
    name = function.name
    other = _tree(file)
    calls = [
        n.lineno
        for n in (ast.walk(other) if other is not None else ())
        if isinstance(n, ast.Call) and (getattr(n.func, "id", None) == name or getattr(n.func, "attr", None) == name)
    ]
    return Site(file, calls[0]) if len(set(calls)) == 1 else None


_GRAD_OFF = frozenset({"no_grad", "inference_mode", "set_grad_enabled", "enable_grad"})


def _switches_grad(expr: ast.expr) -> bool:
    call = expr.func if isinstance(expr, ast.Call) else expr
    name = getattr(call, "attr", None) or getattr(call, "id", None)
    return name in _GRAD_OFF and name != "enable_grad"


@functools.lru_cache(maxsize=4096)
def _in_grad_off_block(file: str, line: int) -> bool:
    tree = _tree(file)
    for node in ast.walk(tree) if tree is not None else ():
        if isinstance(node, ast.With | ast.AsyncWith) and any(_switches_grad(i.context_expr) for i in node.items):
            body = node.body
            if body and body[0].lineno <= line <= (body[-1].end_lineno or body[-1].lineno):
                return True
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and any(
            _switches_grad(d) for d in node.decorator_list
        ):
            if node.body and node.body[0].lineno <= line <= (node.end_lineno or node.lineno):
                return True
    return False


def no_grad_site() -> Site | None:
    """The innermost user frame whose line lies inside a ``with torch.no_grad():`` (or
    ``inference_mode``, ``set_grad_enabled``) block or a function decorated with one: the
    line where gradients were switched off for this operation (which may run deeper, in a
    layer's forward)."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not is_library(filename) and _in_grad_off_block(filename, frame.f_lineno):
            return Site(filename, frame.f_lineno)
        frame = frame.f_back
    return None


@functools.lru_cache(maxsize=1)
def _checkpoint_file() -> str:
    import torch.utils.checkpoint

    return torch.utils.checkpoint.__file__


def in_reentrant_checkpoint() -> Site | None:
    """Where the user's code called torch.utils.checkpoint, when its reentrant function is
    running the block's forward now (it does so under no_grad, so that its result requires
    grad only through its inputs); None when it is not."""
    frame, checkpoint = sys._getframe(1), _checkpoint_file()
    while frame is not None:
        code = frame.f_code
        if code.co_name == "forward" and code.co_filename == checkpoint:
            while frame is not None and is_library(frame.f_code.co_filename):
                frame = frame.f_back
            return None if frame is None else Site(frame.f_code.co_filename, frame.f_lineno)
        frame = frame.f_back
    return None


def _attribute_holding(owner: Any, obj: Any) -> str | None:
    if isinstance(owner, nn.Module):
        for attr, value in (*owner._modules.items(), *owner._parameters.items()):
            if value is obj:
                return attr
    try:
        items = vars(owner).items()
    except TypeError:
        return None
    for attr, value in items:
        if value is obj and not attr.startswith("__"):
            return attr
    return None


def variable_name(obj: Any, max_frames: int = 8) -> str | None:
    """The name of a variable (or a ``self`` attribute) holding ``obj`` in the innermost user
    frames, else in the innermost user frame's globals; None when nothing holds it by name."""
    frame, seen, first = sys._getframe(1), 0, None
    while frame is not None and seen < max_frames:
        if not is_library(frame.f_code.co_filename):
            first = first or frame
            seen += 1
            local = frame.f_locals
            for key, value in local.items():
                if value is obj and key != "self" and not key.startswith("_"):
                    return key
            owner = local.get("self")
            if owner is not None and owner is not obj:
                attr = _attribute_holding(owner, obj)
                if attr:
                    return attr
        frame = frame.f_back
    if first is not None:
        for key, value in first.f_globals.items():
            if value is obj and not key.startswith("_"):
                return key
    return None


def creation_site(root: nn.Module, qualname: str) -> Site | None:
    """The ``self.<name> = ...`` line in an ``__init__`` of user code that created a parameter
    of ``root`` (or the submodule holding it), found by walking ``qualname`` from ``root``:
    the innermost such line (``self.key = nn.Linear(...)`` in an attention head, not the
    ``nn.ModuleList([Block() ...])`` of the model that holds the heads)."""
    parts = qualname.split(".")
    owner, found = root, None
    for i, part in enumerate(parts):
        site = _assignment_in_init(type(owner), part)
        if site is not None:
            found = site
        child = getattr(owner, part, None)
        if not isinstance(child, nn.Module) or i == len(parts) - 1:
            break
        owner = child
    return found


def _body_line(code) -> int:
    """A line inside the body of the function compiled to ``code``."""
    lines = [line for _, _, line in code.co_lines() if line is not None and line > code.co_firstlineno]
    return min(lines) if lines else code.co_firstlineno


def _assignment_in_init(cls: type, attr: str) -> Site | None:
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        code = getattr(init, "__code__", None)
        filename = None if code is None else code.co_filename
        if not filename or is_library(filename) or "site-packages" in filename:
            continue
        # the __init__ in the parsed file (co_firstlineno is its first decorator's line, if any)
        tree = enclosing_function(Site(filename, _body_line(code)))
        if tree is None or tree.name != "__init__":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AnnAssign):
                targets = [node.target]
            else:
                continue
            for target in targets:
                for t in target.elts if isinstance(target, ast.Tuple) else [target]:
                    if (
                        isinstance(t, ast.Attribute)
                        and t.attr == attr
                        and isinstance(t.value, ast.Name)
                        and t.value.id == "self"
                    ):
                        return Site(filename, node.lineno)
            # self.register_parameter("name", ...) / setattr(self, "name", ...)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("register_parameter", "register_module", "add_module")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value == attr
            ):
                return Site(filename, node.lineno)
    return None
