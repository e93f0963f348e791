"""The doctor's checks: one module per kind of finding, discovered from this package.

A check is a small class with no-op defaults for the events of a watch. It asks for the
operations it wants by their short names in ``ops`` (``INPLACE`` for every in-place
operation), and the recorder dispatches only those to its ``on_op``. Each check reaches the
watch's state and reports findings through ``self.doctor`` (a
:class:`~gradwise.doctor.Doctor`). Adding a kind is adding one module here that defines one
:class:`Check` subclass; :data:`KINDS` is derived from what is found.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from gradwise.doctor._provenance import OpEvent, Param, TensorInfo
    from gradwise.doctor._stats import StepNumbers
    from gradwise.doctor._trace import Site
    from gradwise.doctor._watch import Doctor, OptimizerRecord

__all__ = ["CHECKS", "INPLACE", "KINDS", "BackwardEvent", "Check", "StepEvent", "grad_state", "nonzero_counts"]

INPLACE = "<inplace>"
"""The name under which a check asks for every in-place operation."""


@dataclass
class BackwardEvent:
    """One ``backward()`` call (a training step), before and after it runs.

    Attributes:
        step: its index among the watched steps (0-based).
        site: the user line of the call.
        roots: the tensors backward starts from.
        infos: the provenance of each root (None where unknown).
        reached: the parameters its graph reaches (which receive gradient); after the
            backward, also those in ``late``.
        closure: the optimizer whose ``step(closure)`` called it, if any.
        unseen: parameters in the roots' values that the graph walk does not reach.
        late: those of ``unseen`` whose gradient the backward changed all the same (a
            reentrant checkpoint recomputes its block during backward); set after it ran.
        numbers: the norms and activation figures read after it ran
            (:class:`~gradwise.doctor._stats.StepNumbers`).
    """

    step: int
    site: Site | None
    roots: list[torch.Tensor]
    infos: list[TensorInfo | None]
    reached: set[Param]
    closure: OptimizerRecord | None = None
    unseen: set[Param] = field(default_factory=set)
    late: set[Param] = field(default_factory=set)
    numbers: StepNumbers | None = None
    _fresh: set[Param] | None = field(default=None, repr=False)

    @property
    def fresh(self) -> set[Param]:
        """The parameters (reached or unseen) whose gradient was None or all zeros before this
        backward; computed on first use, which must come before the backward runs."""
        if self._fresh is None:
            self._fresh = _fresh(self.reached | self.unseen)
        return self._fresh


@dataclass
class StepEvent:
    """One ``optimizer.step()`` call.

    Attributes:
        optimizer: the optimizer's record.
        site: the user line of the call.
        step: the number of watched backward() calls so far.
        params: the parameters in the optimizer's groups now.
        closure: whether a closure was passed (its backward calls run inside the step).
    """

    optimizer: OptimizerRecord
    site: Site | None
    step: int
    params: list[Param]
    closure: bool


class Check:
    """The protocol of a check: every method is a no-op unless overridden."""

    kind: ClassVar[str] = ""
    order: ClassVar[int] = 100  # position in KINDS and in the order checks see events
    # a numerics check also sees the events of the numerics-only steps (backward, optimizer steps,
    # clipping; no operations, and no provenance is kept then) and finishes at the very end; the
    # others finish when those steps begin
    numerics: ClassVar[bool] = False
    ops: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, doctor: Doctor) -> None:
        self.doctor = doctor

    def on_op(self, event: OpEvent) -> None:
        """An operation named in ``ops`` ran (its provenance is already recorded)."""

    def on_op_error(self, event: OpEvent, error: BaseException) -> None:
        """Any recorded operation raised ``error`` (``event.out`` is None); the error goes on
        to the user's code, which may catch it: see :meth:`on_crash`."""

    def on_model_call(self, module: nn.Module, args: tuple) -> None:
        """A model (a module called while no other module runs) is about to run its forward on
        ``args``, in a watched step; called quietly (the doctor's hooks are inert inside)."""

    def on_clip(self, site: Site | None, params: list[Param]) -> None:
        """``clip_grad_norm_`` / ``clip_grad_value_`` is about to clip the gradients of ``params``."""

    def on_unscale(self, params: list[Param]) -> None:
        """A ``GradScaler`` unscaled the gradients of these parameters (``scaler.unscale_``)."""

    def on_crash(self, error: BaseException) -> None:
        """The watched code ended by raising ``error`` (called before :meth:`finish`, or after
        it when the script runner reports the failure)."""

    def before_backward(self, event: BackwardEvent) -> None:
        """A watched backward() is about to run."""

    def after_backward(self, event: BackwardEvent) -> None:
        """A watched backward() returned."""

    def on_backward_error(self, event: BackwardEvent, error: BaseException) -> None:
        """A watched backward() raised ``error`` (re-raised unchanged afterwards)."""

    def before_step(self, event: StepEvent) -> None:
        """An optimizer step is about to run."""

    def after_step(self, event: StepEvent) -> None:
        """An optimizer step returned."""

    def finish(self) -> None:
        """The watch ended: emit what could only be decided with every step seen."""


def nonzero_counts(tensors: list[torch.Tensor]) -> list[int]:
    """How many non-zero elements each tensor holds (sparse gradients included), with one
    host sync per device."""
    counts = [0] * len(tensors)
    by_device: dict = {}
    for i, t in enumerate(tensors):
        by_device.setdefault(t.device, []).append(i)
    for indices in by_device.values():
        values = [tensors[i]._values() if tensors[i].is_sparse else tensors[i] for i in indices]
        for i, n in zip(indices, torch.stack([torch.count_nonzero(v) for v in values]).tolist(), strict=True):
            counts[i] = n
    return counts


def grad_state(p: Param) -> tuple:
    """Which gradient tensor a parameter holds and its version: changes when backward (or a
    hand-written ``p.grad = g``) writes it."""
    t = p.tensor()
    grad = None if t is None else t.grad
    return (None, None) if grad is None else (id(grad), grad._version)


def _fresh(params: set[Param]) -> set[Param]:
    """The parameters whose .grad is None or all zeros."""
    fresh, holding = set(), []
    for p in params:
        t = p.tensor()
        grad = None if t is None else t.grad
        if grad is None:
            fresh.add(p)
        else:
            holding.append((p, grad))
    counts = nonzero_counts([g for _, g in holding])
    fresh.update(p for (p, _), n in zip(holding, counts, strict=True) if n == 0)
    return fresh


def _discover() -> tuple[type[Check], ...]:
    found: list[type[Check]] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        classes: list[Any] = [
            obj
            for obj in vars(module).values()
            if isinstance(obj, type)
            and issubclass(obj, Check)
            and obj is not Check
            and obj.__module__ == module.__name__
        ]
        if len(classes) != 1 or not classes[0].kind:
            raise RuntimeError(f"{module.__name__} must define exactly one Check subclass with a kind")
        found.append(classes[0])
    return tuple(sorted(found, key=lambda c: (c.order, c.kind)))


CHECKS: tuple[type[Check], ...] = _discover()
"""Every check, in order."""

KINDS: tuple[str, ...] = tuple(c.kind for c in CHECKS)
"""Every kind of finding the doctor reports."""
