"""unscaled-clip: gradients clipped while a ``GradScaler`` still has them multiplied by its
scale.

``scaler.scale(loss).backward()`` leaves every gradient multiplied by the scale (65536 at
first); ``clip_grad_norm_(params, max_norm)`` then compares ``max_norm`` with a norm that
large and clips almost every step, by a factor that moves with the scale, so the effective
learning rate is wrong. ``scaler.unscale_(optimizer)`` must come first (``scaler.step``
then knows not to unscale again). Judged at each clip call: the parameters it clips hold
gradients of a scaled loss that no ``unscale_`` of an optimizer holding them has unscaled.
Not a finding: ``unscale_`` before the clip; a disabled scaler; clipping without a scaler.
"""

from __future__ import annotations

from gradwise.doctor._checks import BackwardEvent, Check

_FIX = (
    "Call scaler.unscale_(optimizer) right before the clip: scaler.scale(loss).backward(); "
    "scaler.unscale_(optimizer); torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm); "
    "scaler.step(optimizer); scaler.update()."
)


class UnscaledClip(Check):
    kind = "unscaled-clip"
    order = 85
    numerics = True  # also judged in the numerics-only steps (a mistake at an epoch boundary)

    def __init__(self, doctor):
        super().__init__(doctor)
        self.scaled: set = set()  # parameters holding gradients of a scaled loss, not unscaled since

    def after_backward(self, event: BackwardEvent) -> None:
        scaled = self.doctor.stats.scaled
        if any(r in scaled for r in event.roots):
            self.scaled |= event.reached

    def on_unscale(self, params) -> None:
        self.scaled.difference_update(params)

    def on_clip(self, site, params) -> None:
        hit = [p for p in params if p in self.scaled]
        if not hit:
            return
        self.doctor.add(
            self.kind,
            "warning",
            f"gradients are clipped while the GradScaler still has them multiplied by its scale: "
            f"{len(hit)} of {len(params)} parameter tensor(s) clipped here hold scaled gradients (no "
            f"scaler.unscale_(optimizer) since scaler.scale(loss).backward()), so the clip threshold is compared with "
            f"a norm inflated by the scale and the clipping is wrong.",
            site,
            sorted(hit, key=lambda p: p.key),
            _FIX,
            step=self.doctor.steps,
            data={"clipped": len(params), "scaled": len(hit)},
        )
