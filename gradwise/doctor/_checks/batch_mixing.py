"""batch-mixing: the model's forward makes sample i's output depend on sample j's input.

A ``view``/``reshape`` that scrambles the batch and feature axes where a ``permute`` /
``transpose`` was meant, a ``softmax`` or a normalisation over dim 0, a sequence-first
``nn.LSTM`` / ``nn.MultiheadAttention`` / ``nn.Transformer*`` fed batch-first data: training
runs, the loss goes down a little, and every prediction leaks information from the other
samples of its batch. Found by a one-off probe of each model (``gradwise.doctor._mixing``):
one forward on a copy of its first batch with a forward-mode tangent on one sample, which
follows that sample through every operation; the line is the operation that mixed the
samples (for a torch layer, the user's line that calls it; for one inside a torch container
that the model call runs, such as an ``nn.Softmax(dim=0)`` in an ``nn.Sequential``, the line
that made it).

Reported only when the model's output really mixes samples, and the operation responsible is
one of those mistakes. Not a finding: BatchNorm (in train mode the probe uses its running
statistics; without running statistics it mixes on purpose and the model is not probed),
attention over the sequence, similarity matrices and batch means in the loss or in the model
(a pairwise ``(B, B)`` matrix, a batch statistic), a mix undone later. A model with
sequence-first layers may legitimately receive ``(T, B, ...)`` inputs; whether its dim 0
holds the samples is then decided from evidence only: the input is a ``DataLoader`` batch
(default collation), it was indexed along dim 0 with the same index as 1-D labels, or the
loss's target has one row per element of its dim 0 (and not of its dim 1). The same
evidence is needed for any sequence layer found running along the probed axis.
"""

from __future__ import annotations

import ast
import functools
import inspect
import os
import sys
import textwrap
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.weak import WeakTensorKeyDictionary

from gradwise._losses import loss_arguments
from gradwise.doctor._checks import Check
from gradwise.doctor._mixing import (
    NORMALISE,
    RESHAPE,
    SEQUENCE,
    SOFTMAX,
    MixEvent,
    ProbeFault,
    ProbeResult,
    ProbeUnsupported,
    batch_input,
    call_kwargs,
    probe,
    sequence_first_modules,
    unprobeable,
    unwrap,
)
from gradwise.doctor._provenance import OpEvent
from gradwise.doctor._trace import Site, user_site

_LOSSES = frozenset(
    {"cross_entropy", "nll_loss", "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "binary_cross_entropy"}
    | {"binary_cross_entropy_with_logits", "kl_div", "soft_margin_loss", "poisson_nll_loss", "multi_margin_loss"}
    | {"multilabel_soft_margin_loss", "gaussian_nll_loss"}
)
# operations that keep a batch's dim 0 where it is (a DataLoader batch moved, cast, scaled)
_KEEP_DIM0 = frozenset(
    {"to", "cuda", "cpu", "float", "double", "half", "bfloat16", "long", "int", "contiguous", "clone", "detach"}
    | {"type", "view", "reshape", "unsqueeze", "squeeze", "flatten", "permute", "transpose", "requires_grad_"}
    | {"div", "__truediv__", "sub", "__sub__", "mul", "__mul__", "add", "__add__", "pin_memory"}
)
_COLLATE = os.path.join("torch", "utils", "data", "_utils", "collate.py")
_DATALOADER = "the input is a DataLoader batch"
_PAIRED = "the input's rows were indexed with the same index as its 1-D labels"


@dataclass(eq=False)
class _Model:
    """A model seen by the check: its probe and the evidence about its input's dim 0."""

    done: bool = False
    step: int = 0
    call_site: Site | None = None  # the user line that called the model
    input_shape: tuple[int, ...] = ()
    sequence_first: list[str] = field(default_factory=list)
    params: set = field(default_factory=set)
    result: ProbeResult | None = None
    evidence: set[str] = field(default_factory=set)  # that dim 0 holds the samples
    counter: set[str] = field(default_factory=set)  # that it does not
    skipped: str | None = None


@dataclass(frozen=True)
class _Indexing:
    key: tuple
    source: weakref.ref
    rows: int
    ndim: int
    out: weakref.ref


class BatchMixing(Check):
    kind = "batch-mixing"
    order = 75
    ops = frozenset({"stack", "__getitem__"}) | _KEEP_DIM0 | _LOSSES

    def __init__(self, doctor) -> None:
        super().__init__(doctor)
        self._models: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> _Model
        self._batches = WeakTensorKeyDictionary()  # tensor -> why its dim 0 holds the samples
        self._flattened = WeakTensorKeyDictionary()  # 1-D tensor -> the 2-D shape it was flattened from
        self._indexing: deque[_Indexing] = deque(maxlen=32)

    # --- the probe ---------------------------------------------------------------------------

    def on_model_call(self, module, args: tuple) -> None:
        root = unwrap(module)
        rec = self._models.get(root)
        if rec is None:
            rec = self._models[root] = _Model()
            why = unprobeable(root)
            if why is not None:
                rec.done, rec.skipped = True, why
        if rec.done or _transformed():
            return
        kwargs = call_kwargs(module)
        found = None if kwargs is None else batch_input(args, kwargs)
        if found is None:
            return  # one sample (an RL step), no tensor: a later call may bring a batch
        where, key, x = found
        rec.done = True
        rec.step = self.doctor.steps
        rec.call_site = user_site()
        rec.input_shape = tuple(x.shape)
        rec.sequence_first = sequence_first_modules(root)
        known = self.doctor.provenance.known
        rec.params = {p for p in (known(t) for t in root.parameters()) if p is not None}
        reason = self._batches.get(x)
        if reason is not None:
            rec.evidence.add(reason)
        named = _batch_named_in_forward(type(root))
        if named is not None:
            rec.evidence.add(f"the model's forward names the input's dim 0 {named!r}")
        self._other_inputs(rec, x, [*args, *kwargs.values()])
        try:
            rec.result = probe(root, args, kwargs, (where, key))
        except ProbeUnsupported as exc:
            rec.skipped = str(exc)
        except ProbeFault as exc:
            self.doctor.fault("batch-mixing probe", exc)

    # --- evidence about the input's dim 0 ------------------------------------------------------

    @staticmethod
    def _other_inputs(rec: _Model, x: torch.Tensor, values: list) -> None:
        """Another input of the same call sharing dim 0 and not dim 1 (a source and a target
        sequence of other lengths) says that dim 0 holds the samples; sharing dim 1 and not dim
        0, that dim 1 does (sequence-first ``src`` and ``tgt``). Square ones (masks) say nothing."""
        rows, second = x.shape[0], x.shape[1]
        for v in values:
            if not isinstance(v, torch.Tensor) or v is x or v.dim() < 2 or v.shape[0] == v.shape[1]:
                continue
            if v.shape[0] == rows and v.shape[1] != second and rows != second:
                rec.evidence.add(f"another input of the model, of shape {_shape(v.shape)}, shares its dim 0")
            elif v.shape[1] == second and v.shape[0] != rows and rows != second:
                rec.counter.add(f"another input of the model, of shape {_shape(v.shape)}, shares its dim 1")

    def on_op(self, event: OpEvent) -> None:
        """Evidence about which dim of a model's input holds the samples: batches collated by a
        DataLoader, rows indexed together with their labels, the operations that keep them, the
        targets of the losses on the models' outputs."""
        op = event.op
        if op in _LOSSES:
            self._loss(event)
        elif op == "stack":
            self._stacked(event)
        elif op == "__getitem__":
            self._indexed(event)
        if op in _KEEP_DIM0 and len(self._batches):
            self._kept(event)
        if op in ("view", "reshape", "flatten") and isinstance(event.out, torch.Tensor) and event.out.dim() == 1:
            source = event.args[0] if event.args and isinstance(event.args[0], torch.Tensor) else None
            if source is not None and source.dim() == 2 and self.doctor.provenance.info(source) is None:
                self._flattened[event.out] = tuple(source.shape)  # targets.reshape(-1)

    def _stacked(self, event: OpEvent) -> None:
        dim = event.kwargs.get("dim", event.args[1] if len(event.args) > 1 else 0)
        if dim != 0 or not isinstance(event.out, torch.Tensor):
            return
        frame = sys._getframe(1)
        for _ in range(40):  # torch.stack inside the default collate function of a DataLoader
            if frame is None:
                return
            if frame.f_code.co_filename.endswith(_COLLATE):
                self._batches[event.out] = _DATALOADER
                return
            frame = frame.f_back

    def _indexed(self, event: OpEvent) -> None:
        """``X[idx]`` and ``y[idx]`` with the same index, ``y`` 1-D with as many rows as ``X``:
        the rows of ``X`` are samples."""
        args, out = event.args, event.out
        if len(args) < 2 or not isinstance(args[0], torch.Tensor) or not isinstance(out, torch.Tensor):
            return
        source = args[0]
        if source.dim() == 0:
            return
        key = _index_key(args[1], source.shape[0])
        if key is None:
            return
        rec = _Indexing(key, weakref.ref(source), source.shape[0], source.dim(), weakref.ref(out))
        for other in self._indexing:
            if other.key != key or other.rows != rec.rows:
                continue
            if other.source() is source or other.source() is None:
                continue
            for labels, data in ((rec, other), (other, rec)):
                if labels.ndim == 1 and data.ndim >= 3:
                    kept = data.out()
                    if kept is not None:
                        self._batches[kept] = _PAIRED
        self._indexing.append(rec)

    def _kept(self, event: OpEvent) -> None:
        out = event.out
        if not isinstance(out, torch.Tensor) or out.dim() == 0:
            return
        for t in event.inputs:
            reason = self._batches.get(t)
            if reason is None or t.dim() == 0 or out.shape[0] != t.shape[0]:
                continue
            if event.op in ("view", "reshape", "flatten") and out.dim() < 2:
                continue
            if event.op == "permute" and _first_dim(event.args) != 0:
                continue
            if event.op == "transpose" and 0 in {d % t.dim() for d in event.args[1:3] if isinstance(d, int)}:
                continue
            if event.op in ("div", "__truediv__", "sub", "__sub__", "mul", "__mul__", "add", "__add__"):
                if tuple(out.shape) != tuple(t.shape):
                    continue
            self._batches[out] = reason
            return

    def _loss(self, event: OpEvent) -> None:
        """A loss on a probed model's output: does its target have one row per element of the
        model input's dim 0 (evidence that it holds the samples), or of its dim 1?"""
        inp, target = loss_arguments(event.args, event.kwargs)
        if not isinstance(inp, torch.Tensor) or not isinstance(target, torch.Tensor):
            return
        info = self.doctor.provenance.info(inp)
        if info is None or not info.prov:
            return
        target_info = self.doctor.provenance.info(target)
        for rec in self._models.values():
            if rec.result is None or not (rec.params & info.prov) or len(rec.input_shape) < 2:
                continue
            if target_info is not None and rec.params & target_info.prov:
                continue  # a target made by the model itself
            rows, second = rec.input_shape[0], rec.input_shape[1]
            if target.numel() == 1 and inp.numel() == 1:
                rec.counter.add("the loss compares one value for the whole input: its dim 0 is a set, not a batch")
                continue
            t = self._flattened.get(target) or tuple(target.shape)
            if not t:
                continue
            if t[0] == rows and second != rows and (len(t) == 1 or (len(t) == 2 and t[1] != second)):
                rec.evidence.add(f"the loss target, of shape {_shape(t)}, has one row per element of the input's dim 0")
            if t[0] == second and second != rows and (len(t) == 1 or (len(t) == 2 and t[1] != rows)):
                rec.counter.add(f"the loss target, of shape {_shape(t)}, has one row per element of the input's dim 1")

    # --- the findings ------------------------------------------------------------------------------

    def finish(self) -> None:
        for root, rec in list(self._models.items()):
            result = rec.result
            if result is None or not result.mixed or not result.culprits or rec.counter:
                continue
            event = result.culprits[0]
            site = event.site
            if site is not None and site == rec.call_site and event.layer not in (None, root):
                # a torch layer inside a torch container called straight from the model call (an
                # nn.Softmax(dim=0) in an nn.Sequential): the line that made the layer says more
                site = self.doctor.construction_site(event.layer) or site
            if site is None:
                continue
            if (event.cls == SEQUENCE or rec.sequence_first) and not rec.evidence:
                continue  # dim 0 may hold the sequence
            self._report(rec, result, event, site)

    def _report(self, rec: _Model, result: ProbeResult, event: MixEvent, site: Site) -> None:
        message, fix = _explain(event, rec, result)
        known = self.doctor.provenance.known
        params = [p for p in (known(t) for t in event.params) if p is not None]
        self.doctor.add(
            self.kind,
            "error",
            message,
            site,
            params,
            fix,
            step=rec.step,
            data={
                "subkind": event.cls,
                "op": event.op,
                "op_input_shape": list(event.in_shape),
                "op_output_shape": list(event.out_shape),
                "dim": event.dim,
                "module": event.module,
                "batch_size": result.batch,
                "sample": result.sample,
                "reached": result.reached,
                "input_shape": list(result.input_shape),
                "output_shape": list(result.output_shape or ()),
                "evidence": sorted(rec.evidence),
                "operations_probed": result.ops,
            },
        )


def _explain(event: MixEvent, rec: _Model, result: ProbeResult) -> tuple[str, str]:
    """The message and the fix of a finding."""
    shape_in = _shape(event.in_shape)
    effect = (
        f"sample i's output depends on the inputs of other samples (sample {result.sample}'s input reaches "
        f"the outputs of {result.reached} other samples of {result.batch}; model input {_shape(result.input_shape)}, "
        f"output {_shape(result.output_shape or ())})."
    )
    evidence = f" ({'; '.join(sorted(rec.evidence))})" if rec.evidence else ""
    if event.cls == RESHAPE:
        message = (
            f"{event.op}{_shape(event.out_shape)} on a tensor of shape {shape_in} (samples along dim {event.axis}) "
            f"moves samples across the batch axis: a view/reshape keeps the memory order and does not swap axes, so "
            + effect
        )
        fix = (
            "Reorder axes with permute/transpose (x.transpose(0, 1), x.permute(1, 0, 2)), and reshape only to merge or "
            "split neighbouring axes (x.permute(0, 2, 3, 1).reshape(n, -1, c)); keep the batch axis where the next "
            "layer expects it."
        )
    elif event.cls == SOFTMAX:
        message = (
            f"{event.op} over dim {event.dim} of a tensor of shape {shape_in}, the dim that holds the samples, "
            f"normalises across the batch: " + effect
        )
        if event.op == "normalize":
            fix = "Normalise each sample over its feature dim: F.normalize(z, dim=1) (dim=-1), not dim=0."
        else:
            fix = (
                f"Normalise over the class dim: {event.op}(x, dim=-1) (dim=1 for (N, C) scores), never over dim 0, "
                "which holds the samples; an nn.Softmax needs dim=-1 too."
            )
    elif event.cls == NORMALISE:
        message = (
            f"{event.op} over dim {event.dim} of a tensor of shape {shape_in} (the samples), which then normalises "
            f"each sample, mixes the batch: " + effect
        )
        fix = "Reduce over the feature dim: x / x.sum(dim=-1, keepdim=True) (or x.norm(dim=-1, keepdim=True))."
    else:  # SEQUENCE
        module = event.module or event.op
        outer = f" (in {event.outer})" if event.outer and event.outer != event.module else ""
        runs = "attends" if event.op in ("multi_head_attention_forward", "scaled_dot_product_attention") else "runs"
        if event.batch_first is False:
            message = (
                f"The sequence-first {module}{outer} (batch_first=False) receives a tensor of shape {shape_in} whose "
                f"dim 0 holds the samples{evidence}: it {runs} along dim 0 as if it were the sequence and treats the "
                f"{event.in_shape[1]} steps of dim 1 as the batch, so " + effect
            )
            fix = (
                f"Create the {module} with batch_first=True, or pass x.transpose(0, 1) (and transpose its output "
                "back with .transpose(0, 1)) so that dim 0 is the sequence and dim 1 the batch."
            )
        else:
            message = (
                f"{module}{outer} receives a tensor of shape {shape_in} with the samples along dim {event.axis}, its "
                f"sequence axis{evidence}: it {runs} along the batch, so " + effect
            )
            fix = (
                "Pass the batch along the dim the layer takes it on: remove the transpose/permute before it, or "
                "construct it with the matching batch_first."
            )
    return message, fix


_BATCH_NAMES = frozenset({"b", "bs", "bsz", "batch", "batch_size", "batchsize", "n_batch", "nbatch", "B", "N"})


@functools.lru_cache(maxsize=256)
def _batch_named_in_forward(cls: type) -> str | None:
    """The name the model's own ``forward`` gives the dim 0 of a tensor when it unpacks a
    shape (``b, t = tokens.shape``, ``batch_size = x.size(0)``), when that name says batch;
    else None. The user's own words that dim 0 holds the samples."""
    try:
        source = textwrap.dedent(inspect.getsource(cls.forward))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        target, value = node.targets[0], node.value
        first = None
        if isinstance(target, ast.Tuple) and target.elts and _is_shape(value):
            first = target.elts[0]
        elif isinstance(target, ast.Name) and _is_dim0(value):
            first = target
        if isinstance(first, ast.Name) and first.id in _BATCH_NAMES:
            return first.id
    return None


def _is_shape(e: ast.expr) -> bool:
    """``x.shape`` or ``x.size()``."""
    if isinstance(e, ast.Attribute):
        return e.attr == "shape"
    return isinstance(e, ast.Call) and isinstance(e.func, ast.Attribute) and e.func.attr == "size" and not e.args


def _is_dim0(e: ast.expr) -> bool:
    """``x.shape[0]`` or ``x.size(0)``."""
    if isinstance(e, ast.Subscript) and isinstance(e.value, ast.Attribute) and e.value.attr == "shape":
        return isinstance(e.slice, ast.Constant) and e.slice.value == 0
    if isinstance(e, ast.Call) and isinstance(e.func, ast.Attribute) and e.func.attr == "size" and len(e.args) == 1:
        return isinstance(e.args[0], ast.Constant) and e.args[0].value == 0
    return False


def _transformed() -> bool:
    """Inside a torch.func transform (vmap, grad): the inputs are per-sample wrappers."""
    try:
        return torch._C._functorch.peek_interpreter_stack() is not None
    except Exception:
        return False


def _shape(shape) -> str:
    return "(" + ", ".join(str(n) for n in shape) + ")"


def _first_dim(args: tuple) -> int | None:
    dims = args[1:]
    if len(dims) == 1 and isinstance(dims[0], list | tuple):
        dims = tuple(dims[0])
    return dims[0] if dims and isinstance(dims[0], int) else None


def _index_key(index: Any, rows: int) -> tuple | None:
    """A comparable key for an index along dim 0 (a slice, an integer tensor or list); None for
    anything else (one row, a boolean mask, an index along other dims)."""
    if isinstance(index, tuple):
        if not index or any(not (i is Ellipsis or (isinstance(i, slice) and i == slice(None))) for i in index[1:]):
            return None
        index = index[0]
    if isinstance(index, slice):
        if not all(v is None or isinstance(v, int) for v in (index.start, index.stop, index.step)):
            return None
        return ("slice", *index.indices(rows))
    if isinstance(index, torch.Tensor):
        if index.dtype == torch.bool or index.is_floating_point() or index.dim() != 1 or index.numel() > 4096:
            return None
        if index.device.type != "cpu":
            return ("tensor", id(index))
        return ("values", tuple(index.tolist()))
    if isinstance(index, list) and 0 < len(index) <= 4096 and all(isinstance(i, int) for i in index):
        return ("values", tuple(index))
    return None
