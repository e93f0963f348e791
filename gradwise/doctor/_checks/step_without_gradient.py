"""step-without-gradient: ``optimizer.step()`` runs without the gradient of a backward since
its previous step.

Two ways, judged at each watched step of an optimizer (outside a closure, which computes
its own gradient):

- the gradients the last backward gave its parameters were cleared before the step: a
  ``zero_grad()`` placed between ``loss.backward()`` and ``optimizer.step()``. The step
  updates nothing (or applies only momentum and weight decay). The line is that
  ``zero_grad`` call (the step's line when the gradients were cleared some other way).
- no backward reached its parameters since its previous step, and their gradients are the
  ones that step already used: the same gradient is applied twice (a second ``step()``
  call, or ``step()`` in a loop that does not run ``backward()``). The line is the step.

Not a finding: deliberate accumulation (several backward calls, one step); ``zero_grad``
after the step or before the backward; another model's ``zero_grad`` between a backward
and this optimizer's step (a GAN zeroing the discriminator after the generator's
backward); gradients written by hand (``p.grad = g``) between two steps; a step whose
parameters have no gradient at all before any backward (a warm-up call, a no-op).
"""

from __future__ import annotations

from gradwise.doctor._checks import BackwardEvent, Check, StepEvent, grad_state, nonzero_counts

_FIX = (
    "Call optimizer.zero_grad() before loss.backward() (or after optimizer.step()), never between backward() and "
    "step(): the order is zero_grad(), forward, loss.backward(), optimizer.step()."
)
_TWICE_FIX = (
    "Call optimizer.step() once per backward() (or once per k backward calls when accumulating); remove the extra "
    "step() or move it to where backward() runs."
)


class StepWithoutGradient(Check):
    kind = "step-without-gradient"
    order = 78
    numerics = True  # also judged in the numerics-only steps (a mistake at an epoch boundary)

    def __init__(self, doctor):
        super().__init__(doctor)
        self.reached_at: dict = {}  # param -> the index of the latest watched backward that reached it
        self.used: dict = {}  # optimizer key -> {param: grad state} right after its last step

    def after_backward(self, event: BackwardEvent) -> None:
        for p in event.reached:
            self.reached_at[p] = event.step

    def before_step(self, event: StepEvent) -> None:
        if event.closure:
            return
        rec = event.optimizer
        last = rec.last_step_at  # backward calls counted at its previous watched step (None: none yet)
        since = [p for p in event.params if self.reached_at.get(p, -1) >= (last or 0)]
        if since:
            self._cleared(event, since)
        elif last is not None:
            self._twice(event, last)

    def after_step(self, event: StepEvent) -> None:
        self.used[event.optimizer.key] = {p: grad_state(p) for p in event.params}

    def _cleared(self, event: StepEvent, since: list) -> None:
        """Parameters a backward reached since the previous step: are their gradients gone?"""
        grads = [(p, _grad(p)) for p in since]
        holding = [(p, g) for p, g in grads if g is not None]
        counts = nonzero_counts([g for _, g in holding])
        zero = {p for (p, _), n in zip(holding, counts, strict=True) if n == 0}
        cleared = {p for p, g in grads if g is None} | zero
        if not cleared:
            return
        doctor = self.doctor
        latest = max(self.reached_at[p] for p in since)
        calls = [c for c in doctor.zero_grad_calls if c.steps > latest and c.params & cleared]
        if not calls:
            # nothing zeroed them: zero gradients were computed so (a dead layer, weights gone non-finite); None
            # ones were set so by hand (p.grad = None), which is the mistake
            cleared = {p for p, g in grads if g is None}
            if not cleared:
                return
        call = calls[-1] if calls else None
        what = "optimizer.zero_grad()" if call is None or not call.module else "model.zero_grad()"
        if call is not None:
            message = (
                f"{what} runs after loss.backward() and before optimizer.step(): it clears the gradients the "
                f"backward just computed, so the step at line {getattr(event.site, 'line', '?')} updates "
                f"{len(cleared)} of {len(since)} parameter tensor(s) with no gradient and the model does not learn."
            )
        else:
            message = (
                f"optimizer.step() runs after the gradients of the last backward() were cleared: {len(cleared)} of "
                f"{len(since)} parameter tensor(s) have no gradient at the step, so it updates nothing."
            )
        doctor.add(
            self.kind,
            "error",
            message,
            call.site if call is not None else event.site,
            sorted(cleared, key=lambda p: p.key),
            _FIX,
            step=event.step,
            data={
                "subkind": "cleared",
                "cleared": len(cleared),
                "reached": len(since),
                "optimizer_step_line": getattr(event.site, "line", None),
            },
        )

    def _twice(self, event: StepEvent, last: int) -> None:
        """No backward reached the parameters since the previous step: the same gradient again?"""
        before = self.used.get(event.optimizer.key)
        if before is None:
            return
        same = [p for p in event.params if p in before and before[p][0] is not None and grad_state(p) == before[p]]
        if not same:
            return
        counts = nonzero_counts([_grad(p) for p in same])
        stale = [p for p, n in zip(same, counts, strict=True) if n]
        if not stale:
            return
        self.doctor.add(
            self.kind,
            "error",
            f"optimizer.step() runs again with no backward() since its previous step: it applies the same gradient "
            f"a second time to {len(stale)} parameter tensor(s).",
            event.site,
            stale,
            _TWICE_FIX,
            step=event.step,
            data={"subkind": "no-backward"},
        )


def _grad(p):
    t = p.tensor()
    return None if t is None else t.grad
