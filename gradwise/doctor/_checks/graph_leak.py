"""graph-leak: a tensor with autograd history is accumulated across training steps, so every
step's graph stays alive (memory grows until it runs out, and each step is slower).

Two shapes, both judged on the watched steps:

- arithmetic that folds each step's loss into a tensor kept from the previous step
  (``total_loss += loss``, ``running = 0.9 * running + 0.1 * loss``), outside any model's
  forward: the same line combines, in two or more steps, the new value with the value it
  made in an earlier step, which still carries that step's graph. The line is that
  accumulation.
- a list (or dict) that keeps each step's loss or model output (``losses.append(loss)``):
  a backward's loss tensor is still alive two steps later, held by a container. The line is
  the ``append`` (``extend``, ``insert``, ``+=``) on that container in the user's source.

Not a finding: ``total += loss.item()``, ``append(loss.detach())``, ``append(loss.item())``
(no history kept); a sum of micro-batch losses backpropagated once (one step); a recurrent
state carried into the next step's forward (stale-graph's business when it fails); the
previous step's loss kept in a variable (one step, not a growing history).
"""

from __future__ import annotations

import ast
import collections
import itertools
import sys
from typing import Any

import torch
from torch.utils.weak import WeakTensorKeyDictionary

from gradwise._frames import is_library
from gradwise.doctor._checks import BackwardEvent, Check
from gradwise.doctor._provenance import OpEvent, grad_fn
from gradwise.doctor._trace import Site, _tree, enclosing_function

_ACCUMULATE = frozenset(
    {"add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "__sub__", "__rsub__", "__isub__"}
    | {"mul", "mul_", "__mul__", "__rmul__", "__imul__", "div", "div_", "__truediv__", "__itruediv__"}
    | {"cat", "stack", "hstack", "vstack"}
)
_FIX = (
    "Accumulate a number, not the tensor: total_loss += loss.item() (or loss.detach()); for a list, "
    "losses.append(loss.item()) or losses.append(loss.detach())."
)
_FRAMES = 6  # the user frames looked into, innermost first
_CONTAINERS = (list, dict, collections.deque)
_RECENT = 3  # the entries of a container looked at, the last ones


def _recent_tensors(container: Any) -> list[torch.Tensor]:
    """The tensors among the last entries of a list or deque, or the values of a dict, one
    level deep (``history["g"][-1]``, ``logs[-1]["loss"]``)."""
    if isinstance(container, dict):
        items = list(container.values())[-8:]
    else:
        items = list(itertools.islice(reversed(container), _RECENT)) if container else []
    out = []
    for item in items:
        if isinstance(item, torch.Tensor):
            out.append(item)
        elif isinstance(item, list | collections.deque):
            out.extend(t for t in itertools.islice(reversed(item), _RECENT) if isinstance(t, torch.Tensor))
        elif isinstance(item, dict):
            out.extend(t for t in list(item.values())[:8] if isinstance(t, torch.Tensor))
    return out


class GraphLeak(Check):
    kind = "graph-leak"
    order = 90
    numerics = True  # also judged in the numerics-only steps (a mistake at an epoch boundary)
    ops = _ACCUMULATE

    def __init__(self, doctor):
        super().__init__(doctor)
        self.folds: dict[Site, set[int]] = {}  # accumulation line -> the steps in which it folded history in
        self.seen = WeakTensorKeyDictionary()  # tensor found in a container -> the first step it was seen at
        self.reported: set[int] = set()  # ids of the containers reported
        self.failed: set[int] = set()  # steps whose backward raised

    def on_op(self, event: OpEvent) -> None:
        provenance = self.doctor.provenance
        if provenance.in_forward or not event.grad_enabled or event.site is None:
            return
        for t in event.inputs:
            info = provenance.info(t)
            if info is not None and info.step < event.step and info.site == event.site and t.requires_grad:
                history = grad_fn(t)
                if history is not None:
                    self.folds.setdefault(event.site, set()).add(event.step)
                return

    def before_backward(self, event: BackwardEvent) -> None:
        """Look into the containers the user's frames hold (lists, deques, dicts, one level
        deep, their last few entries): tensors with autograd history seen there at an
        earlier backward, two or more of them, are a growing history of graphs."""
        frame = sys._getframe(1)
        frames = 0
        while frame is not None and frames < _FRAMES:
            if is_library(frame.f_code.co_filename):
                frame = frame.f_back
                continue
            frames += 1
            site = Site(frame.f_code.co_filename, frame.f_lineno)
            scope = frame.f_locals
            owner = scope.get("self")
            named = [(k, v) for k, v in scope.items() if isinstance(v, _CONTAINERS) and not k.startswith("__")]
            if owner is not None and hasattr(owner, "__dict__"):
                named += [(k, v) for k, v in vars(owner).items() if isinstance(v, _CONTAINERS)]
            for name, container in named:
                if id(container) in self.reported:
                    continue
                kept = [t for t in _recent_tensors(container) if t.grad_fn is not None]
                persisted = [t for t in kept if self.seen.setdefault(t, event.step) < event.step]
                if len(persisted) >= 2:
                    self.reported.add(id(container))
                    self._report(name, container, site, event)
            frame = frame.f_back

    def _report(self, name: str, container: Any, site: Site, event: BackwardEvent) -> None:
        line = _append_site(name, site)
        self.doctor.add(
            self.kind,
            "warning",
            f"{name!r} keeps tensors with their autograd graph from earlier steps (losses or outputs that were not "
            f"detached): every step's graph, activations included, stays in memory, and memory grows with every "
            f"step.",
            line or site,
            [],
            _FIX,
            step=event.step + 1,
            data={"subkind": "container", "container": name, "size": len(container)},
        )

    def finish(self) -> None:
        for site, steps in self.folds.items():
            steps = steps - self.failed
            if len(steps) < 2:
                continue
            self.doctor.add(
                self.kind,
                "warning",
                f"each step's loss is folded into a tensor kept from the previous step, with its autograd history "
                f"(in {len(steps)} of the watched steps): the tensor holds the graph of every step so far, so memory "
                f"grows with every step.",
                site,
                [],
                _FIX,
                step=min(steps) + 1,
                data={"subkind": "accumulation", "steps": len(steps)},
            )


def _append_site(name: str, near: Site | None) -> Site | None:
    """The line that adds to the container ``name``, in the function of the training loop (the
    innermost user frame calling backward), else anywhere in its file."""
    site = near
    if site is None:
        return None
    function = enclosing_function(site)
    scopes = [function] if function is not None else []
    tree = _tree(site.file)
    if tree is not None:
        scopes.append(tree)
    for scope in scopes:
        lines = sorted(node.lineno for node in ast.walk(scope) if _adds_to(node, name))
        if lines:
            return Site(site.file, lines[0])
    return None


_NUMBERS = frozenset({"item", "detach", "tolist", "numpy", "cpu", "float", "int", "round"})


def _a_number(e: ast.expr) -> bool:
    """Whether an appended expression is plainly not a tensor with history (``loss.item()``,
    ``float(loss)``, ``loss.detach()``, a constant)."""
    if isinstance(e, ast.Constant):
        return True
    if isinstance(e, ast.Call):
        f = e.func
        return (isinstance(f, ast.Attribute) and f.attr in _NUMBERS) or (isinstance(f, ast.Name) and f.id in _NUMBERS)
    return False


def _adds_to(node: ast.AST, name: str) -> bool:
    def is_name(e: ast.expr) -> bool:
        return (isinstance(e, ast.Name) and e.id == name) or (isinstance(e, ast.Attribute) and e.attr == name)

    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        base = node.func.value
        while isinstance(base, ast.Subscript):  # history["g"].append(...)
            base = base.value
        if node.func.attr not in ("append", "extend", "insert", "add", "appendleft") or not is_name(base):
            return False
        return not (node.args and _a_number(node.args[-1]))  # append(loss.item()) keeps no graph
    if isinstance(node, ast.AugAssign):
        return is_name(node.target)
    if isinstance(node, ast.Assign):  # d[key] = loss
        return any(isinstance(t, ast.Subscript) and is_name(t.value) for t in node.targets)
    return False
