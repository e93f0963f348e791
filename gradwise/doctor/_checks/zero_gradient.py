"""zero-gradient: a parameter's gradient is identically zero because an operation with a
zero derivative (``round``, ``floor``, ``ceil``, ``sign``, a clamp saturated on every
element) lies on its path to the loss. A zero gradient without such an operation (a dead
unit, a zero mask) is not this finding."""

from __future__ import annotations

from gradwise.doctor._checks import BackwardEvent, Check
from gradwise.doctor._provenance import CLAMPS

_FIXES = {
    "round": "Use gw.ops.round_ste(x) (straight-through rounding) instead of torch.round.",
    "floor": "Use gw.ops.round_ste (or floor with a straight-through gradient: x + (x.floor() - x).detach()).",
    "ceil": "Use a straight-through ceil: x + (x.ceil() - x).detach().",
    "trunc": "Use a straight-through trunc: x + (x.trunc() - x).detach().",
    "fix": "Use a straight-through trunc: x + (x.trunc() - x).detach().",
    "sign": "Use gw.ops.sign_ste(x, clip=1.0) instead of torch.sign.",
}
_CLAMP_FIX = (
    "Keep the clamp's input inside its range (or widen the range): saturated on every element, it passes no "
    "gradient. For a hard limit that must train, clamp with a straight-through gradient "
    "(x + (x.clamp(lo, hi) - x).detach())."
)


class ZeroGradient(Check):
    kind = "zero-gradient"
    order = 30

    def __init__(self, doctor):
        super().__init__(doctor)
        self._before: dict = {}  # param -> (its gradient before this backward, the zero ops on its path)

    def before_backward(self, event: BackwardEvent) -> None:
        self._before = {}
        zeros = [z for info in event.infos if info is not None for z in info.zeros]
        for z in zeros:
            for p in z.params & event.reached:
                t = p.tensor()
                if t is None or p in self._before:
                    continue
                prior = None if t.grad is None else t.grad.detach().clone()
                self._before[p] = (prior, [y for y in zeros if p in y.params])

    def after_backward(self, event: BackwardEvent) -> None:
        for p, (prior, causes) in self._before.items():
            t = p.tensor()
            if t is None or t.grad is None or t.grad.numel() == 0:
                continue
            delta = t.grad if prior is None else t.grad - prior
            if not bool((delta == 0).all()):
                continue
            z = causes[0]
            op = z.op.rstrip("_")
            what = (
                f"{z.op} is saturated on every element"
                if z.op in CLAMPS
                else f"{z.op} has a zero derivative almost everywhere"
            )
            self.doctor.add(
                self.kind,
                "error",
                what + ": the parameter's gradient is exactly 0, so it never changes.",
                z.site,
                [p],
                _FIXES.get(op, _CLAMP_FIX),
                step=event.step + 1,
                data={"op": z.op},
            )
        self._before = {}
