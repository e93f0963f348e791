"""inplace-modification: an in-place operation changed a tensor that backward still needs,
so ``backward()`` fails with "modified by an inplace operation". The error's shape and
version are matched against the in-place operations recorded, and against the parameters
that ``optimizer.step()`` updated in place (a GAN that steps the discriminator before the
generator's backward through it). The error is re-raised unchanged."""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

from gradwise.doctor._checks import INPLACE, BackwardEvent, Check, StepEvent
from gradwise.doctor._provenance import OpEvent
from gradwise.doctor._trace import Site

_SHAPE = re.compile(r"\[torch\.\w+ \[([\d, ]*)\]\]")
_VERSION = re.compile(r"is at version (\d+)")
_SAVED_BY = re.compile(r"which is output \d+ of (\w+)")


@dataclass(frozen=True)
class _Modification:
    site: Site | None
    op: str
    shape: tuple[int, ...]
    version: int
    by_optimizer: bool
    variable: str | None = None


class InplaceModification(Check):
    kind = "inplace-modification"
    order = 70
    ops = frozenset({INPLACE})

    def __init__(self, doctor):
        super().__init__(doctor)
        self.modifications: deque[_Modification] = deque(maxlen=512)

    def on_op(self, event: OpEvent) -> None:
        t = event.mutated
        self.modifications.append(_Modification(event.site, event.op, tuple(t.shape), t._version, False))

    def after_step(self, event: StepEvent) -> None:
        name = event.optimizer.variable or "optimizer"
        for p in event.params:
            t = p.tensor()
            if t is not None and t.grad is not None:
                shape = tuple(t.shape)
                self.modifications.append(_Modification(event.site, f"{name}.step()", shape, t._version, True, name))

    def on_backward_error(self, event: BackwardEvent, error: BaseException) -> None:
        text = str(error)
        if "modified by an inplace operation" not in text:
            return
        shape_match = _SHAPE.search(text)
        shape = tuple(int(s) for s in shape_match.group(1).split(",") if s.strip()) if shape_match else None
        version_match = _VERSION.search(text)
        version = int(version_match.group(1)) if version_match else None
        saved = _SAVED_BY.search(text)
        needed = saved.group(1) if saved else "an operation"

        def fits(m: _Modification) -> bool:
            if shape is None:
                return True
            return m.shape == shape or (m.by_optimizer and len(shape) == 2 and m.shape == shape[::-1])

        candidates = [m for m in self.modifications if fits(m)]
        exact = [m for m in candidates if version is not None and m.version == version]
        chosen = (exact or candidates or [None])[-1]
        if chosen is None:
            self.doctor.add(
                self.kind,
                "error",
                f"an in-place operation modified a tensor that backward needs (saved by {needed}), so backward() "
                "fails; the doctor did not see which one.",
                event.site,
                [],
                "Look for in-place operations (x += y, x.mul_(...), inplace=True, x[idx] = ...) on tensors used "
                "earlier in the forward, and for an optimizer.step() between a forward and its backward().",
                step=event.step + 1,
            )
            return
        if chosen.by_optimizer:
            self.doctor.add(
                self.kind,
                "error",
                f"{chosen.op} updated parameters in place that the graph of a later backward() still needs (saved by "
                f"{needed}): that graph was built by a forward that ran before the step, so backward() fails.",
                chosen.site,
                [],
                f"Call backward() for every loss built on the old forward before {chosen.op}, or run the forward "
                "again after the step (in a GAN: compute the discriminator's output on the fakes anew for the "
                "generator's loss, after the discriminator's step).",
                step=event.step + 1,
                data={"by": "optimizer"},
            )
            return
        op = chosen.op
        plain = op[:-1] if op.endswith("_") and not op.startswith("__") else op
        self.doctor.add(
            self.kind,
            "error",
            f"{op} modifies in place a tensor that backward needs (saved by {needed}), so backward() fails.",
            chosen.site,
            [],
            f"Use the out-of-place form ({plain}(...) instead of {op}(...), x = x + y instead of x += y, "
            f"inplace=False), or clone() the tensor before modifying it.",
            step=event.step + 1,
        )
