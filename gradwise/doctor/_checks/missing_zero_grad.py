"""missing-zero-grad: an optimizer steps with gradients that still hold what earlier steps
accumulated, because nobody zeroed them in between.

Judged per optimizer, at its step: a parameter whose current gradient began accumulating
before this optimizer's previous step (and is not zero) was never zeroed. Gradients that
other losses put into a model between its own steps (the generator's backward through a
GAN's discriminator) are harmless when the model is zeroed before its next backward, and
are not counted. Deliberate accumulation over k batches zeroes after every k-th step and
is clean. Inside ``optimizer.step(closure)`` every closure call must start from zeroed
gradients (LBFGS calls it several times per step).
"""

from __future__ import annotations

from gradwise.doctor._checks import BackwardEvent, Check, StepEvent, nonzero_counts

_FIX = (
    "Call optimizer.zero_grad() once per optimizer step (before backward); for deliberate gradient accumulation "
    "over k batches, zero after every k-th step."
)
_CLOSURE_FIX = (
    "Call optimizer.zero_grad() at the start of the closure: optimizer.step(closure) may call it several times "
    "(LBFGS does), and each call must compute a fresh gradient."
)


class MissingZeroGrad(Check):
    kind = "missing-zero-grad"
    order = 80

    def __init__(self, doctor):
        super().__init__(doctor)
        self.since: dict = {}  # param -> the watched step at which its current gradient began (-1: before)
        self.latest: dict = {}  # param -> the latest watched step whose backward reached it

    def before_backward(self, event: BackwardEvent) -> None:
        fresh = event.fresh  # also for the unseen parameters, while their gradients are as before
        for p in event.reached:
            self.latest[p] = event.step
            if p in fresh:
                self.since[p] = event.step
            else:
                self.since.setdefault(p, -1)
        closure = event.closure
        if closure is not None:
            stale = [p for p in event.reached if p in closure.params and p not in fresh]
            if stale:
                self.doctor.add(
                    self.kind,
                    "error",
                    "backward() inside the optimizer's closure adds to gradients that are not zeroed: each call of "
                    "the closure must compute the gradient afresh, and these keep growing.",
                    closure.step_site,
                    stale,
                    _CLOSURE_FIX,
                    step=event.step + 1,
                    data={"closure": True},
                )

    def after_backward(self, event: BackwardEvent) -> None:
        for p in event.late:  # reached all the same (a reentrant checkpoint)
            if p in event.fresh:
                self.since[p] = event.step
            else:
                self.since.setdefault(p, -1)

    def before_step(self, event: StepEvent) -> None:
        last = event.optimizer.last_step_at
        if event.closure or last is None:
            return
        if all(self.latest.get(p, -1) < last for p in event.params):
            return  # no backward since its previous step: nothing accumulated (step-without-gradient's case)
        suspects = []
        for p in event.params:
            t = p.tensor()
            if t is not None and t.grad is not None and self.since.get(p, -1) < last:
                suspects.append((p, t.grad))
        if not suspects:
            return
        nonzero = nonzero_counts([g for _, g in suspects])
        stale = [p for (p, _), n in zip(suspects, nonzero, strict=True) if n]
        if stale:
            self.doctor.add(
                self.kind,
                "error",
                "optimizer.step() uses gradients that were not zeroed since its previous step: each step adds the "
                "new gradient to all the old ones.",
                event.site,
                stale,
                _FIX,
                step=event.step,
            )
