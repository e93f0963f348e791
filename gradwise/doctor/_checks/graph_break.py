"""graph-break: a parameter that takes part in the loss gets no gradient, because the
autograd path from it was cut (argmax indices, a comparison, an integer cast, ``.detach()``,
``.data``, ``torch.no_grad()``, ``.item()`` or a NumPy round trip re-wrapped by
``torch.tensor``).

Decided at the end of the watch: a cut matters only for a parameter that is meant to train
(it is in an optimizer, or no optimizer is known), that no watched backward gave a gradient
at all, and in a loss whose backward was followed by a step of an optimizer holding it. A
deliberate stop-gradient (the ``fake.detach()`` of a GAN's discriminator step, a target
network, an actor-critic's detached advantage) cuts a path to parameters that receive their
gradient from another loss, and is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gradwise.doctor._checks import BackwardEvent, Check, StepEvent
from gradwise.doctor._provenance import Cut, OpEvent, decisive_cuts
from gradwise.doctor._trace import Site

_INDEX_OPS = frozenset({"argmax", "argmin", "topk", "sort", "argsort", "max", "min"})
_COMPARISONS = frozenset({"gt", "lt", "ge", "le", "eq", "ne", "__gt__", "__lt__", "__ge__", "__le__", "__eq__"})
_COMPARISONS = _COMPARISONS | {"__ne__", "greater", "less", "greater_equal", "less_equal", "isclose"}


@dataclass(eq=False)
class _Pending:
    candidates: frozenset  # parameters in the root's value that this backward does not reach
    cuts: frozenset
    site: Site | None
    step: int
    steppers: list = field(default_factory=list)  # the optimizers stepped after this backward

    def matters_for(self, p) -> bool:
        """A cut in this loss starves ``p`` only if this loss's gradient was meant to update it:
        an optimizer holding ``p`` stepped after this backward (or no step was seen)."""
        return not self.steppers or any(p in rec.params for rec in self.steppers)


class GraphBreak(Check):
    kind = "graph-break"
    order = 10
    # indexing with indices from argmin/argmax: a codebook or embedding lookup
    ops = frozenset({"__getitem__", "embedding", "index_select", "take", "gather", "take_along_dim"})

    def __init__(self, doctor):
        super().__init__(doctor)
        self.pending: list[_Pending] = []
        self._open: list[_Pending] = []  # pending since the last optimizer step
        self.lookups: set[Cut] = set()

    def on_op(self, event: OpEvent) -> None:
        if not any(t.requires_grad for t in event.inputs):
            return
        info = self.doctor.provenance.info
        for t in event.inputs:
            record = info(t)
            if record is not None and not t.requires_grad:
                self.lookups.update(c for c in record.cuts if c.reason == "integer" and c.op in _INDEX_OPS)

    def before_backward(self, event: BackwardEvent) -> None:
        for info in event.infos:
            if info is None or not info.prov:
                continue
            candidates = {p for p in info.prov if _trainable(p)} - event.reached
            if candidates:
                pending = _Pending(frozenset(candidates), info.cuts, event.site, event.step)
                self.pending.append(pending)
                self._open.append(pending)

    def on_backward_error(self, event: BackwardEvent, error: BaseException) -> None:
        if "does not require grad" in str(error):
            return  # "element 0 of tensors does not require grad": the cut is the explanation
        # this step never completed: its failure is the finding (stale-graph, inplace-modification, ...)
        self.pending = [p for p in self.pending if p.step != event.step]
        self._open = [p for p in self._open if p.step != event.step]

    def after_step(self, event: StepEvent) -> None:
        for pending in self._open:
            pending.steppers.append(event.optimizer)
        self._open = []

    def broken(self) -> set:
        """The parameters a cut starved: meant to train, and no watched backward reached them."""
        return {p for pending in self.pending for p in pending.candidates if self.doctor.starved(p)}

    def finish(self) -> None:
        starved = self.broken()
        for pending in self.pending:
            broken = {p for p in pending.candidates & starved if pending.matters_for(p)}
            if not broken:
                continue
            by_cut: dict[tuple, set] = {}
            cuts = decisive_cuts(pending.cuts, broken)
            # chained reentrant checkpoints: the first one's output requires no grad, so the next one's
            # inputs do not either; the fix of the first (use_reentrant=False) mends them all
            first = min((c for c in cuts if c.reason == "checkpoint" and c.site), key=_order, default=None)
            for cut in cuts:
                lookup = any(c.site == cut.site and c.op == cut.op for c in self.lookups)
                at = first if first is not None and cut.reason == "checkpoint" else cut
                by_cut.setdefault((at.site, at.op, at.reason, lookup), set()).update(cut.params)
            for (site, op, reason, lookup), params in by_cut.items():
                what, fix = _explain(op, reason, lookup)
                self.doctor.add(
                    self.kind,
                    "error",
                    f"{what}, so parameters that take part in the loss get no gradient.",
                    site,
                    params,
                    fix,
                    step=pending.step + 1,
                    data={"cut": reason, "op": op},
                )
            rest = broken - set().union(*by_cut.values()) if by_cut else broken
            if rest:
                self.doctor.add(
                    self.kind,
                    "error",
                    "parameters took part in computing the loss but get no gradient: the autograd path from them "
                    "to the loss is cut by an operation the doctor could not place.",
                    pending.site,
                    rest,
                    "Look for .detach(), .data, torch.no_grad(), .item(), .numpy() or integer results between these "
                    "parameters and the loss.",
                    step=pending.step + 1,
                    data={"cut": "unknown"},
                )


def _order(cut) -> tuple:
    return (cut.site.file, cut.site.line)


def _trainable(p) -> bool:
    t = p.tensor()
    return t is not None and t.requires_grad


_FIXES = {
    "no_grad": "Compute this outside torch.no_grad() (keep no_grad for evaluation only).",
    "detach": "Remove the .detach() (if the stop-gradient is deliberate, leave these parameters out of the optimizer).",
    "data": "Use the tensor itself instead of .data.",
    "numpy": (
        "Do the arithmetic with torch operations (torch.tanh, torch.exp, ...) instead of NumPy, so autograd follows "
        "it; convert to NumPy only for logging and metrics."
    ),
}
_LOOKUP_FIX = (
    "Pass the chosen vector straight through: q = z + (q - z).detach(), with a codebook loss F.mse_loss(q, "
    "z.detach()) and a commitment loss F.mse_loss(z, q.detach()) (VQ-VAE); or make the choice differentiable with "
    "gw.ops.argmax_onehot(-distances) @ codebook."
)
_COMPARISON_FIX = (
    "A comparison returns booleans, which carry no gradient: use a smooth gate such as torch.sigmoid((x - t) / tau), "
    "or gw.ops.sign_ste for a hard step with a straight-through gradient."
)


def _explain(op: str, reason: str, lookup: bool) -> tuple[str, str]:
    """What cut the path, and the fix for the situation."""
    if reason in ("integer", "boolean"):
        if lookup:
            what = f"{op} picks a codebook (or embedding) entry by its index, and an index carries no gradient back"
            return what, _LOOKUP_FIX
        if op in _INDEX_OPS:
            fix = (
                f"{op} returns integer indices, which carry no gradient. For a classification loss pass the logits "
                f"to F.cross_entropy; for a hard choice that must train use gw.ops.argmax_onehot(logits) (or "
                f"gw.ops.topk_mask / gw.ops.sample_onehot)."
            )
            return f"{op} returns integer indices", fix
        if op in _COMPARISONS:
            return f"{op} returns a boolean tensor", _COMPARISON_FIX
        kind = "a boolean" if reason == "boolean" else "an integer"
        fix = (
            f"{op} gives {kind} tensor, which carries no gradient: keep it floating (gw.ops.round_ste rounds with a "
            f"straight-through gradient)."
        )
        return f"{op} returns {kind} tensor", fix
    if reason == "checkpoint":
        what = (
            "a reentrant torch.utils.checkpoint (use_reentrant=True) is given inputs none of which requires grad: it "
            "runs its block under no_grad and returns a result without autograd history"
        )
        fix = (
            "Pass use_reentrant=False to torch.utils.checkpoint.checkpoint (then the block's parameters get their "
            "gradient whatever its inputs); with the reentrant variant an input must require grad."
        )
        return what, fix
    if reason == "extract":
        fix = (
            f".{op}() turns the tensor into Python numbers and torch.tensor(...) makes a new leaf without history: "
            f"keep the value as a tensor."
        )
        return f".{op}() leaves autograd", fix
    what = {
        "no_grad": f"{op} runs under torch.no_grad()",
        "detach": "detach() cuts the autograd graph",
        "data": ".data bypasses autograd",
        "numpy": "the value leaves torch for NumPy here and comes back through torch.from_numpy / torch.tensor "
        "without its history",
    }.get(reason, f"{op} returns a tensor without autograd history")
    fix = _FIXES.get(reason, f"{op} returns a tensor without autograd history: keep the computation in autograd.")
    return what, fix
