"""requires-grad-bandaid: ``requires_grad_()`` (or ``requires_grad = True``) on a result
without autograd history. It silences PyTorch's "does not require grad" error, and nothing
upstream trains; the cut it hides is reported as graph-break at the cutting line."""

from __future__ import annotations

from dataclasses import dataclass

from gradwise.doctor._checks import Check
from gradwise.doctor._provenance import OpEvent, grad_fn
from gradwise.doctor._trace import Site


@dataclass(frozen=True)
class _Bandaid:
    site: Site | None
    prov: frozenset
    cuts: frozenset
    step: int


class RequiresGradBandaid(Check):
    kind = "requires-grad-bandaid"
    order = 60
    ops = frozenset({"requires_grad_", "requires_grad"})  # the method, and the attribute's setter

    def __init__(self, doctor):
        super().__init__(doctor)
        self.bandaids: list[_Bandaid] = []

    def on_op(self, event: OpEvent) -> None:
        args = event.args
        target = args[0] if args else None
        wants = args[1] if len(args) > 1 else event.kwargs.get("requires_grad", True)
        info = self.doctor.provenance.info(target)
        if wants and info is not None and info.prov and grad_fn(target) is None:
            self.bandaids.append(_Bandaid(event.site, info.prov, info.cuts, event.step))

    def finish(self) -> None:
        for bandaid in self.bandaids:
            starved = {p for p in bandaid.prov if self.doctor.starved(p)}
            if not starved:
                continue
            real = next((c.site for c in bandaid.cuts if c.params & starved and c.site is not None), None)
            self.doctor.add(
                self.kind,
                "error",
                "requires_grad is switched on for a result that has no autograd history: this silences PyTorch's "
                "'does not require grad' error, and nothing upstream trains"
                + (f" (the real cut is at {real})." if real else "."),
                bandaid.site,
                starved,
                "Remove the requires_grad line and fix the cut it hides (see the graph-break finding).",
                step=bandaid.step + 1,
            )
