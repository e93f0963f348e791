"""requires-grad-bandaid: ``requires_grad_()`` (or ``requires_grad = True``, or
``torch.tensor(..., requires_grad=True)`` on values taken out of torch) on a result without
autograd history. It silences PyTorch's "does not require grad" error, and nothing
upstream trains; the cut it hides is reported as graph-break at the cutting line."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gradwise.doctor._checks import Check
from gradwise.doctor._provenance import REWRAP, OpEvent, decisive_cuts, grad_fn
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
    # the method, the attribute's setter, and torch.tensor(values_taken_out_of_torch, requires_grad=True)
    ops = frozenset({"requires_grad_", "requires_grad"}) | REWRAP

    def __init__(self, doctor):
        super().__init__(doctor)
        self.bandaids: list[_Bandaid] = []

    def on_op(self, event: OpEvent) -> None:
        if event.op in REWRAP:
            out = event.out
            if event.kwargs.get("requires_grad") and isinstance(out, torch.Tensor):
                info = self.doctor.provenance.info(out)
                if info is not None and info.prov and grad_fn(out) is None:
                    self.bandaids.append(_Bandaid(event.site, info.prov, info.cuts, event.step))
            return
        if event.op == "requires_grad" and not event.name.endswith("__set__"):
            return  # reading loss.requires_grad is not switching it on
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
            real = next((c.site for c in decisive_cuts(bandaid.cuts, starved) if c.site is not None), None)
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
