"""stale-graph: a tensor with autograd history made in an earlier step is reused, so
``backward()`` fails with "Trying to backward through the graph a second time". Pointed at
where the tensor was made (a derived tensor computed once in ``__init__``), or, for a state
carried across steps (an RNN's hidden state), at the training-loop line where the
``detach()`` belongs. The error is re-raised unchanged."""

from __future__ import annotations

from gradwise.doctor._checks import BackwardEvent, Check
from gradwise.doctor._trace import Site, creation_site, user_stack


class StaleGraph(Check):
    kind = "stale-graph"
    order = 50

    def after_backward(self, event: BackwardEvent) -> None:
        # uses of older history, if any, were legitimate (retain_graph=True, ...)
        self.doctor.provenance.stale_uses.clear()

    def on_backward_error(self, event: BackwardEvent, error: BaseException) -> None:
        if "backward through the graph a second time" not in str(error):
            return
        made, stack, prov = None, [], ()
        for use in reversed(self.doctor.provenance.stale_uses):
            use_made = use.made
            tensor = use.tensor() if use.tensor is not None else None
            if use_made is None and tensor is not None:  # made before the watch: a module attribute?
                use_made = self._attribute_site(tensor)
            if use_made is not None or not stack:
                made, stack, prov = use_made, use.stack, use.prov
            if made is not None:
                break
        reused = stack[0][0] if stack else event.site
        where = made
        if made is None or made == reused:
            # made and reused by the same line (a recurrent state): point at the training loop, the
            # frame of the function that calls backward(), where the detach belongs
            caller = user_stack()
            loop = caller[0] if caller else None
            where = next((s for s, fn in stack if loop and s.file == loop[0].file and fn == loop[1]), made or reused)
            reused = where
        self.doctor.add(
            self.kind,
            "error",
            f"a tensor with autograd history made at {made} in an earlier step is reused at {reused}; its graph was "
            f"freed by the previous backward(), so this backward() fails ('Trying to backward through the graph a "
            f"second time').",
            where,
            prov,
            "Compute the tensor inside forward (for a constrained parameter: gw.constrain(module, name, ...)), or "
            "detach it at the step boundary (hidden = hidden.detach()).",
            step=event.step + 1,
        )

    def _attribute_site(self, tensor) -> Site | None:
        """Where a tensor kept as a module attribute (``self.x = f(self.raw)``) was assigned."""
        for model in self.doctor.models:
            root = model.module()
            if root is None:
                continue
            for prefix, module in root.named_modules():
                for attr, value in vars(module).items():
                    if value is tensor:
                        return creation_site(root, f"{prefix}.{attr}" if prefix else attr)
        return None
