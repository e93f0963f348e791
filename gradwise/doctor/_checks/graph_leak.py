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
import gc
import weakref

import torch

from gradwise.doctor._checks import BackwardEvent, Check
from gradwise.doctor._provenance import OpEvent, grad_fn
from gradwise.doctor._trace import Site, _tree, enclosing_function, variable_name

_ACCUMULATE = frozenset(
    {"add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "__sub__", "__rsub__", "__isub__"}
    | {"mul", "mul_", "__mul__", "__rmul__", "__imul__", "div", "div_", "__truediv__", "__itruediv__"}
    | {"cat", "stack", "hstack", "vstack"}
)
_FIX = (
    "Accumulate a number, not the tensor: total_loss += loss.item() (or loss.detach()); for a list, "
    "losses.append(loss.item()) or losses.append(loss.detach())."
)
_AGE = 2  # a loss still alive this many steps later is held by something that grows


class GraphLeak(Check):
    kind = "graph-leak"
    order = 90
    ops = _ACCUMULATE

    def __init__(self, doctor):
        super().__init__(doctor)
        self.folds: dict[Site, set[int]] = {}  # accumulation line -> the steps in which it folded history in
        self.kept: list[tuple[int, weakref.ref, Site | None]] = []  # (step, loss, backward line)
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
        still = []
        for step, ref, site in self.kept:
            t = ref()
            if t is None:
                continue
            if event.step - step < _AGE:
                still.append((step, ref, site))
                continue
            self._held(t, step, site)
        self.kept = still
        for root in event.roots:
            if root.grad_fn is not None and root.numel() == 1:
                self.kept.append((event.step, weakref.ref(root), event.site))

    def on_backward_error(self, event: BackwardEvent, error: BaseException) -> None:
        self.failed.add(event.step)

    def _held(self, t: torch.Tensor, step: int, backward_site: Site | None) -> None:
        """A loss from ``step`` still alive: find the container that holds it, and its append."""
        containers = [r for r in gc.get_referrers(t) if isinstance(r, list | dict)]
        for container in containers:
            name = variable_name(container)
            if name is None:
                continue
            site = _append_site(name, backward_site)
            self.doctor.add(
                self.kind,
                "warning",
                f"the loss of each step is kept in {name!r} with its autograd graph: the loss of step {step + 1} is "
                f"still alive {_AGE} steps later, so every step's graph (activations included) stays in memory and "
                f"memory grows with every step.",
                site or backward_site,
                [],
                _FIX,
                step=step + 1,
                data={"subkind": "container", "container": name, "size": len(container)},
            )
            return

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


def _adds_to(node: ast.AST, name: str) -> bool:
    def is_name(e: ast.expr) -> bool:
        return (isinstance(e, ast.Name) and e.id == name) or (isinstance(e, ast.Attribute) and e.attr == name)

    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr in ("append", "extend", "insert", "add", "appendleft") and is_name(node.func.value)
    if isinstance(node, ast.AugAssign):
        return is_name(node.target)
    if isinstance(node, ast.Assign):  # d[key] = loss
        return any(isinstance(t, ast.Subscript) and is_name(t.value) for t in node.targets)
    return False
