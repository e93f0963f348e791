"""stale-graph: a tensor with autograd history made in an earlier step is reused, so
``backward()`` fails with "Trying to backward through the graph a second time". Pointed at
where the tensor was made (a derived tensor computed once in ``__init__``), or, for a state
carried across steps (an RNN's hidden state), at the training-loop line where the
``detach()`` belongs. The error is re-raised unchanged."""

from __future__ import annotations

import ast

from gradwise.doctor._checks import BackwardEvent, Check
from gradwise.doctor._trace import Site, caller_line, creation_site, enclosing_function, statement_at, user_stack


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
        caller = user_stack()
        loop = caller[0] if caller else None  # the frame of the function that calls backward()
        where = made
        if made is None or made == reused:
            # made and reused by the same line (a recurrent state): point at the line that carries it
            # to the next step, where the detach belongs: an attribute assignment (self.state = ...),
            # or the assignment in the training loop (logits, hidden = model(x, hidden))
            where = _stored_later(made) if made is not None and not _carries(made, "", None) else None
            where = where or next((s for s, fn in stack if _carries(s, fn, loop)), None)
            if where is None:
                where = next(
                    (s for s, fn in stack if loop and s.file == loop[0].file and fn == loop[1]), made or reused
                )
            reused = where
        elif loop is not None and made is not None:
            # made by a helper's return statement: the line that called the helper once, before the loop
            where = caller_line(made, loop[0].file) or made
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


def _carries(site: Site, function: str, loop) -> bool:
    """Whether the statement at ``site`` stores a value that outlives the step: an attribute
    (``self.state = ...``), or a name assigned in the training loop's own function."""
    statement = statement_at(site)
    if not isinstance(statement, ast.Assign | ast.AugAssign | ast.AnnAssign):
        return False
    targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
    leaves = [e for t in targets for e in (t.elts if isinstance(t, ast.Tuple | ast.List) else [t])]
    if any(isinstance(e, ast.Attribute) for e in leaves):
        return True
    in_loop = loop is not None and site.file == loop[0].file and function == loop[1]
    return in_loop and any(isinstance(e, ast.Name) for e in leaves)


def _stored_later(made: Site) -> Site | None:
    """For ``o, h = self.gru(x, self.state)`` followed, in the same function, by
    ``self.state = h``: the line that stores the result on an attribute."""
    statement = statement_at(made)
    if not isinstance(statement, ast.Assign):
        return None
    names = {
        e.id
        for t in statement.targets
        for e in (t.elts if isinstance(t, ast.Tuple | ast.List) else [t])
        if isinstance(e, ast.Name)
    }
    function = enclosing_function(made)
    if not names or function is None:
        return None
    for node in ast.walk(function):
        if not isinstance(node, ast.Assign) or node.lineno <= made.line:
            continue
        values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
        stores = any(isinstance(t, ast.Attribute) for t in node.targets) or any(
            isinstance(e, ast.Attribute) for t in node.targets if isinstance(t, ast.Tuple) for e in t.elts
        )
        if stores and any(isinstance(v, ast.Name) and v.id in names for v in values):
            return Site(made.file, node.lineno)
    return None
