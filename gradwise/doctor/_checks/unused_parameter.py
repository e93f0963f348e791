"""unused-parameter: a trainable parameter of a model that trains, never used in any
watched forward (a layer created and never called, a submodule called under a sibling's
name by a typo, a declared bias never added). Judged at the end of the watch: used means
seen in an operation inside a module's forward or reached by a backward (which also covers
compiled regions); a parameter used elsewhere whose path a cut ended is the graph-break's.
Reported at the line that created it (the innermost ``self.<name> = ...``)."""

from __future__ import annotations

from gradwise.doctor._checks import Check
from gradwise.doctor._trace import creation_site


class UnusedParameter(Check):
    kind = "unused-parameter"
    order = 20

    def finish(self) -> None:
        doctor = self.doctor
        if doctor.steps == 0:
            return
        # a parameter whose use a cut hid (in a loss outside forward, then .item()) is the graph-break's
        used = doctor.provenance.used | doctor.reached | doctor.check("graph-break").broken()
        for model in doctor.models:
            root = model.module()
            if model.merged_into is not None or root is None or not doctor.trained(model):
                continue
            by_site: dict = {}
            for p in model.params:
                t = p.tensor()
                if t is None or not t.requires_grad or p in used:
                    continue
                site = creation_site(root, p.qualname) or model.site
                by_site.setdefault(site, []).append(p)
            for site, params in by_site.items():
                doctor.add(
                    self.kind,
                    "warning",
                    "trainable parameters never used in the forward computation: they get no gradient and waste "
                    "memory and optimizer state.",
                    site,
                    params,
                    "Use them in forward (a typo calling a sibling layer twice?), delete them, or set "
                    "requires_grad=False if they are kept on purpose (for DDP, find_unused_parameters=True only "
                    "hides this).",
                )
