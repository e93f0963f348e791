"""What each tensor's value depends on: the parameters, the cuts on the way, the
zero-derivative operations, and its form (probabilities, log-probabilities, ...).

Every tensor an operation produces gets a :class:`TensorInfo` when its value depends on a
tracked parameter or it has a form: the user line that made it, the step, the parameters
its *value* depends on (through any operation, also ``argmax``, ``detach``, ``.item()``
re-wrapped by ``torch.tensor``, a NumPy round trip, in-place ops), the cuts (where the
autograd path from a parameter ended) and the zero-derivative operations on the way.

Identity survives garbage collection: a parameter is a :class:`Param` record with a serial
number that is never reused, found from its tensor through a weak-keyed dictionary; records
hold only weak references, so a model deleted by the user (a k-fold loop) is gone here too.
"""

from __future__ import annotations

import itertools
import weakref
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch.utils.weak import WeakTensorKeyDictionary

from gradwise._losses import form_after
from gradwise.doctor._trace import Site, in_reentrant_checkpoint, no_grad_site

__all__ = ["Cut", "Extraction", "OpEvent", "Param", "Provenance", "StaleUse", "TensorInfo", "ZeroOp", "decisive_cuts"]

EXTRACT = frozenset({"item", "tolist", "numpy"})
REWRAP = frozenset({"tensor", "as_tensor", "from_numpy", "new_tensor", "asarray"})
ZERO_DERIVATIVE = frozenset({"round", "floor", "ceil", "trunc", "sign", "fix", "round_", "floor_", "ceil_", "sign_"})
CLAMPS = frozenset({"clamp", "clip", "clamp_", "clip_", "hardtanh"})
_NOT_INPLACE = frozenset({"requires_grad_", "share_memory_", "retain_grad", "record_stream"})
_DUNDER_INPLACE = frozenset(
    {"__iadd__", "__isub__", "__imul__", "__itruediv__", "__ipow__", "__setitem__", "__iand__", "__ior__"}
    | {"__ixor__", "__ifloordiv__", "__imod__", "__ilshift__", "__irshift__", "__imatmul__"}
)
PROPERTIES = frozenset({"data", "T", "mT", "H", "mH", "real", "imag"})  # getters that compute a tensor
_EMPTY: frozenset = frozenset()
_PAIRWISE = frozenset({"broadcast_tensors", "atleast_1d", "atleast_2d", "atleast_3d"})
# outputs that take only the shape, dtype and device of their tensor inputs, never their values
SHAPE_ONLY = frozenset(
    {"rand_like", "randn_like", "randint_like", "zeros_like", "ones_like", "empty_like", "full_like"}
    | {"new_zeros", "new_ones", "new_empty", "new_full"}
)


@dataclass(eq=False)
class Param:
    """A trainable leaf tensor the doctor has seen: a module's parameter or a user's leaf.

    Compared by identity; ``key`` is a serial number, never reused.
    """

    key: int
    ref: weakref.ref
    shape: tuple[int, ...]
    is_parameter: bool  # an nn.Parameter (else a plain leaf with requires_grad=True)
    variable: str | None = None  # the variable holding it when first used (for leaves outside modules)
    steps: set[int] = field(default_factory=set)  # steps in which an operation used it
    model: Any = None  # the ModelRecord of the outermost model called with it, if any
    qualname: str | None = None  # its name in that model
    named: bool = False  # whether a variable name was looked for
    made_at: Any = None  # the Site that constructed the layer holding it (nn.Linear(...)), if known

    def tensor(self) -> torch.Tensor | None:
        return self.ref()

    def __repr__(self) -> str:
        return f"Param({self.key}, {self.variable or self.shape})"


@dataclass(frozen=True)
class Cut:
    """Where the autograd path from some parameters ended (their value went on without it)."""

    site: Site | None
    op: str
    reason: str  # no_grad, detach, data, boolean, integer, extract, numpy, other
    params: frozenset


@dataclass(frozen=True)
class ZeroOp:
    """An operation whose derivative is zero (almost) everywhere on the path from ``params``."""

    site: Site | None
    op: str
    params: frozenset


@dataclass(slots=True)
class TensorInfo:
    site: Site | None
    step: int
    op: str
    prov: frozenset
    cuts: frozenset
    zeros: frozenset
    form: str | None


@dataclass
class Extraction:
    """A tensor's value taken out of torch (``.item()``, ``.tolist()``, ``.numpy()``)."""

    op: str
    site: Site | None
    step: int
    prov: frozenset
    cuts: frozenset
    floats: frozenset  # the Python floats it gave (item / tolist)
    array: weakref.ref | None  # the NumPy array it gave
    shape: tuple[int, ...] | None


@dataclass
class StaleUse:
    """An operation that used a tensor whose history was made in an earlier step."""

    made: Site | None  # None: made before the watch began
    stack: list  # the user stack of the use, innermost first: [(Site, function name)]
    prov: tuple
    tensor: weakref.ref | None


@dataclass(slots=True)
class OpEvent:
    """One torch operation, as the recorder saw it."""

    name: str  # the full name, torch.nn.functional.cross_entropy
    op: str  # the short name, cross_entropy
    site: Site | None
    args: tuple
    kwargs: dict
    inputs: list
    out: Any
    outputs: list
    mutated: torch.Tensor | None
    step: int
    grad_enabled: bool


def is_inplace(op: str, kwargs: dict) -> bool:
    return (op.endswith("_") and not op.startswith("__") and op not in _NOT_INPLACE) or (
        op in _DUNDER_INPLACE or kwargs.get("inplace") is True
    )


class Provenance:
    """The records of one watch: parameters, tensor infos, extractions, stale uses."""

    def __init__(self, name_leaf) -> None:
        self._name_leaf = name_leaf  # (tensor) -> variable name or None, called when a leaf is first seen
        self.infos = WeakTensorKeyDictionary()
        self.params = WeakTensorKeyDictionary()  # tensor -> Param
        self._serial = itertools.count()
        self.extractions: deque[Extraction] = deque(maxlen=256)
        self.stale_uses: deque[StaleUse] = deque(maxlen=8)
        self.used: set[Param] = set()  # parameters an operation used inside a module's forward
        self.in_forward = False  # set by the doctor's module hooks
        self.copied: set[Param] = set()  # parameters updated in place from other parameters (EMA, copy_)
        self._data_of = WeakTensorKeyDictionary()  # p.data alias -> p's record

    # --- parameters ----------------------------------------------------------------------

    def param(self, t: torch.Tensor) -> Param:
        """The record of a trainable leaf, made on first sight."""
        record = self.params.get(t)
        if record is None:
            record = Param(next(self._serial), weakref.ref(t), tuple(t.shape), isinstance(t, torch.nn.Parameter))
            self.params[t] = record
        return record

    def known(self, t: torch.Tensor) -> Param | None:
        return self.params.get(t)

    def param_of_alias(self, t: torch.Tensor) -> Param | None:
        """The parameter whose ``.data`` ``t`` is, if it is one."""
        return self._data_of.get(t)

    def info(self, t: Any) -> TensorInfo | None:
        return self.infos.get(t) if isinstance(t, torch.Tensor) else None

    # --- operations ------------------------------------------------------------------------

    def rewrap(self, data: Any, step: int) -> tuple[frozenset, frozenset] | None:
        """Provenance of ``torch.tensor(data)`` (and friends) where ``data`` came out of torch."""
        if not self.extractions:
            return None
        floats = _floats(data)
        array = data if type(data).__module__ == "numpy" and hasattr(data, "shape") else None
        prov, cuts = set(), set()
        for e in self.extractions:
            if e.array is not None and array is not None:
                source = e.array()
                same = source is not None and (
                    source is array or getattr(array, "base", None) is source or _shares_memory(source, array)
                )
                if not (same or e.step == step):  # same step: NumPy arithmetic or a reduction of it
                    continue
                prov |= e.prov
                cuts |= {replace(c, reason="numpy") if c.reason in ("detach", "data", "no_grad") else c for c in e.cuts}
            elif floats and e.floats and not floats.isdisjoint(e.floats):
                prov |= e.prov
                cuts |= e.cuts
        return (frozenset(prov), frozenset(cuts)) if prov else None

    def observe(self, ev: OpEvent, rewrapped: tuple[frozenset, frozenset] | None) -> None:
        """Update the records for one operation."""
        if ev.op in SHAPE_ONLY:
            return  # noise or a constant shaped like its input: no value of it flows on
        if ev.op in _PAIRWISE and len(ev.inputs) == len(ev.outputs) > 1:
            for t, o in zip(ev.inputs, ev.outputs, strict=True):  # output i depends on input i only
                self.observe(replace(ev, args=(t,), kwargs={}, inputs=[t], out=o, outputs=[o]), None)
            return
        step, mutated = ev.step, ev.mutated
        prov, cuts, zeros, grad_prov = set(), set(), set(), set()
        forms = []
        for t in ev.inputs:
            info = self.infos.get(t)
            if info is None:
                forms.append(None)
                history = grad_fn(t)
                if t.requires_grad and history is None:
                    if t is mutated:
                        continue
                    record = self.param(t)
                    if not record.named and record.model is None:
                        record.named = True  # named where the user's code first uses it
                        record.variable = self._name_leaf(t)
                    record.steps.add(step)
                    if self.in_forward:
                        self.used.add(record)
                    prov.add(record)
                    grad_prov.add(record)
                elif history is not None and history is not UNREADABLE:  # history from before the watch: stale?
                    self.stale_uses.append(StaleUse(None, [], (), weakref.ref(t)))
                continue
            forms.append(info.form)
            prov |= info.prov
            cuts |= info.cuts
            zeros |= info.zeros
            if t.requires_grad:
                grad_prov |= info.prov
                if info.step < step and grad_fn(t) not in (None, UNREADABLE):
                    from gradwise.doctor._trace import user_stack

                    self.stale_uses.append(StaleUse(info.site, user_stack(), tuple(info.prov), None))
        if rewrapped is not None:
            prov |= rewrapped[0]
            cuts |= rewrapped[1]
        op = ev.op

        if op in EXTRACT:
            if prov and ev.inputs:
                cut = Cut(ev.site, op, "extract", frozenset(grad_prov)) if grad_prov else None
                out = ev.out
                is_array = type(out).__module__ == "numpy"
                self.extractions.append(
                    Extraction(
                        op,
                        ev.site,
                        step,
                        frozenset(prov),
                        frozenset(cuts | ({cut} if cut else set())),
                        frozenset() if is_array else _floats(out),
                        _weak(out) if is_array else None,
                        tuple(out.shape) if is_array else None,
                    )
                )
            return
        if mutated is not None:
            target = self._data_of.get(mutated)
            if target is not None and prov - {target}:
                self.copied.add(target)  # p.data.copy_(q.data), p.data.mul_(m).add_(q.data, ...)
        form = form_after(op, forms, ev.args, ev.kwargs)
        if not prov and form is None:
            return
        outputs = ev.outputs
        if mutated is not None and all(o is not mutated for o in outputs):
            outputs = [*outputs, mutated]
        prov_f = frozenset(prov)
        cuts_f = frozenset(cuts) if cuts else _EMPTY
        zeros_f = frozenset(zeros) if zeros else _EMPTY
        grad_f = frozenset(grad_prov)
        for o in outputs:
            if o.requires_grad and grad_fn(o) is None and o is not mutated and rewrapped is None:
                continue  # a new leaf (a parameter made from data): a source, not a result
            # (torch.tensor(values_from_item, requires_grad=True) is a result: a band-aid)
            o_cuts, o_zeros = cuts_f, zeros_f
            if grad_prov and not o.requires_grad:
                reason = _cut_reason(op, o, ev.grad_enabled)
                site = ev.site
                if reason == "no_grad":
                    site = no_grad_site()
                    call = in_reentrant_checkpoint() if site is None else None
                    if call is not None:
                        reason, site = "checkpoint", call  # its block runs under no_grad: no input requires grad
                    site = site or ev.site
                o_cuts = cuts_f | {Cut(site, op, reason, grad_f)}
            elif grad_prov and (op in ZERO_DERIVATIVE or (op in CLAMPS and _saturated(op, ev.args, ev.kwargs))):
                o_zeros = zeros_f | {ZeroOp(ev.site, op, grad_f)}
            existing = self.infos.get(o)
            if existing is not None and o is mutated:
                existing.prov = existing.prov | prov_f
                existing.cuts = existing.cuts | o_cuts
                existing.zeros = existing.zeros | o_zeros
                existing.form = form
            elif o is mutated and o.requires_grad and grad_fn(o) is None:
                # an in-place update of a parameter: it stays a source; from other parameters' values
                # (an EMA, load_state_dict of a target network) it is a copy, not trained by gradient
                record = self.params.get(o)
                if record is not None and (record.model is not None or record.steps) and prov - {record}:
                    self.copied.add(record)
                continue
            else:
                self.infos[o] = TensorInfo(ev.site, step, op, prov_f, o_cuts, o_zeros, form)
                if op == "data" and ev.inputs:
                    source = self.params.get(ev.inputs[0])
                    if source is not None:
                        self._data_of[o] = source


UNREADABLE = object()
_IMPLICIT = frozenset({"integer", "boolean"})


def decisive_cuts(cuts, params) -> list[Cut]:
    """The cuts that starve ``params``: an explicit cut (``.detach()``, ``.item()``, ``no_grad``,
    ...) is preferred over an integer or boolean result on a side path to the same
    parameters (the sampled action of REINFORCE, whose log-probability is what ``.item()``
    cut). Each returned cut's ``params`` are narrowed to the ones it is decisive for."""
    hit = [(c, c.params & params) for c in cuts]
    hit = [(c, ps) for c, ps in hit if ps]
    explicit = frozenset().union(*(ps for c, ps in hit if c.reason not in _IMPLICIT))
    out = []
    for c, ps in hit:
        if c.reason in _IMPLICIT:
            ps = ps - explicit
        if ps:
            out.append(replace(c, params=ps))
    return out


def grad_fn(t: torch.Tensor) -> Any:
    """``t.grad_fn``, or a sentinel where reading it raises (a view made under no_grad whose
    base was modified in place)."""
    try:
        return t.grad_fn
    except RuntimeError:
        return UNREADABLE


def _cut_reason(op: str, o: torch.Tensor, grad_enabled: bool) -> str:
    if not grad_enabled:
        return "no_grad"
    if op in ("detach", "detach_"):
        return "detach"
    if op == "data":
        return "data"
    if o.dtype == torch.bool:
        return "boolean"
    if not (o.is_floating_point() or o.is_complex()):
        return "integer"
    return "other"


def _saturated(op: str, args, kwargs) -> bool:
    """A clamp whose input lies outside its range on every element (so its gradient is 0)."""
    if not args or not isinstance(args[0], torch.Tensor):
        return False
    x = args[0].detach()
    lo = kwargs.get("min", args[1] if len(args) > 1 else None)
    hi = kwargs.get("max", args[2] if len(args) > 2 else None)
    if op == "hardtanh":
        lo = -1.0 if lo is None else lo
        hi = 1.0 if hi is None else hi
    if x.numel() == 0 or (lo is None and hi is None):
        return False
    below = x < lo if lo is not None else torch.zeros_like(x, dtype=torch.bool)
    above = x > hi if hi is not None else torch.zeros_like(x, dtype=torch.bool)
    return bool((below | above).all())


def _floats(data: Any, limit: int = 100_000) -> frozenset:
    """The Python floats in a number or a nested list (ints and bools are too common to link by)."""
    out: set[float] = set()
    stack = [data]
    while stack and len(out) < limit:
        d = stack.pop()
        if isinstance(d, float):
            out.add(d)
        elif isinstance(d, list | tuple):
            stack.extend(d)
    return frozenset(out)


def _weak(obj: Any) -> weakref.ref | None:
    try:
        return weakref.ref(obj)
    except TypeError:
        return None


def _shares_memory(a: Any, b: Any) -> bool:
    try:
        import numpy as np

        return bool(np.may_share_memory(a, b))
    except Exception:
        return False
