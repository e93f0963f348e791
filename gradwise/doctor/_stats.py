"""The numbers of the watched steps, kept on the device and read at most twice a step.

What the numerics checks (``non-finite``, ``exploding-gradient``, ``vanishing-gradient``,
``dead-units``) judge, gathered in one place so that each value is computed once:

- every recorded operation with a floating output leaves an :class:`OpRecord`: the smallest
  and largest of its outputs (finite exactly when they are; no overflow), the records its
  inputs came from (so that a non-finite loss can be followed back to where the non-finite
  values were born), and, for the operations whose values or derivatives have singular points
  (``log``, ``sqrt``, ``exp``, division, ``acos``, ...), a few counts of the inputs at
  those points;
- the scale (RMS) of the output of every linear map applied to a parameter (the chain of
  activation scales through the layers), the saturated fraction of every ``sigmoid``/``tanh``
  output, and which units of every ReLU-family call were active for some sample;
- during a watched ``backward()``, a hook on each autograd node takes the extremes of the
  gradients it produced, in execution order (the first node that produced a non-finite gradient from
  finite ones is where a backward NaN was born);
- after it, the gradient and weight norms of the parameters it reached (``torch._foreach_norm``,
  one host transfer per device); around each optimizer step, the norm of the update.

The loss is read before the backward (one transfer); the per-operation extremes are read only
when the loss is not finite, the node extremes only when a gradient is not.
"""

from __future__ import annotations

import math
import os
import sys
import weakref
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.weak import WeakTensorKeyDictionary

from gradwise.doctor._provenance import UNREADABLE, grad_fn

if TYPE_CHECKING:
    from gradwise.doctor._checks import BackwardEvent, StepEvent
    from gradwise.doctor._provenance import OpEvent, Param
    from gradwise.doctor._trace import Site
    from gradwise.doctor._watch import Doctor, OptimizerRecord

__all__ = ["ActivationRecord", "OpRecord", "Stats", "StepNumbers", "UpdateRecord"]

# views and copies: the same elements as their input, so the input's record stands for them
ALIASES = frozenset(
    {"view", "reshape", "transpose", "permute", "t", "T", "mT", "squeeze", "unsqueeze", "flatten", "unflatten"}
    | {"contiguous", "clone", "detach", "expand", "expand_as", "movedim", "view_as", "reshape_as", "data"}
    | {"swapaxes", "swapdims", "squeeze_", "unsqueeze_", "transpose_", "t_", "requires_grad_", "retain_grad"}
)
LINEAR_MAPS = frozenset(
    {"linear", "matmul", "mm", "bmm", "addmm", "baddbmm", "einsum", "bilinear", "__matmul__", "__rmatmul__"}
    | {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
)
RNN_OPS = frozenset({"rnn_relu", "rnn_tanh"})  # unbounded recurrences: their scale can grow over time
RELU_FAMILY = frozenset({"relu", "relu_", "relu6", "threshold", "threshold_"})
SATURATING = frozenset({"sigmoid", "sigmoid_", "tanh", "tanh_"})
_RELU_MODULES = (torch.nn.ReLU, torch.nn.ReLU6, torch.nn.Threshold)
_NORMS = frozenset({"batch_norm", "instance_norm", "group_norm", "conv1d", "conv_transpose1d"})
_DIVISIONS = frozenset({"div", "true_divide", "__truediv__", "divide", "__rtruediv__", "reciprocal", "__itruediv__"})
_HISTORY = 256  # steps kept (the first quarter and the latest)
_UPDATE_LIMIT = 1 << 26  # parameters' elements above which update norms are not measured (a copy of each)
_DENSE = 16  # each optimizer's first steps whose updates are all measured; then one in _SPARSE
_SPARSE = 8


def _dense(steps: int) -> bool:
    """Whether an optimizer's step (with ``steps`` before it) has its update measured: the first
    ``_DENSE`` (a watch is a few steps: all of them), then one in ``_SPARSE`` (a copy of the
    parameters per step is the costliest figure of a long watch)."""
    return steps < _DENSE or steps % _SPARSE == 0


def _called_by_torch() -> bool:
    """Whether the innermost frame outside gradwise is torch's own code (a layer's default init)."""
    frame = sys._getframe(1)
    while frame is not None and (_GRADWISE in frame.f_code.co_filename or frame.f_code.co_filename.endswith(_DISPATCH)):
        frame = frame.f_back
    return frame is not None and _TORCH in frame.f_code.co_filename


_GRADWISE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TORCH = os.path.dirname(os.path.abspath(torch.__file__))
_DISPATCH = (os.path.join("torch", "overrides.py"), os.path.join("nn", "init.py"))  # on the way to the caller


def _floating(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.layout == torch.strided and t.is_floating_point()


def _wide(device: torch.device) -> torch.dtype:
    """float64 where the device has it: for the loss and for the norms a float32 one overflowed."""
    return torch.float32 if device.type == "mps" else torch.float64


def _probe(t: torch.Tensor) -> torch.Tensor | None:
    """The smallest and largest element of ``t`` (finite exactly when every element is: min and
    max propagate NaN, and unlike a sum they cannot overflow), on the device."""
    t = t.detach()
    if t.numel() == 0:
        return None
    return torch.stack(torch.aminmax(t))


def _norm_dtype(t: torch.Tensor, wide: bool = False) -> torch.dtype:
    """float32 for a norm (10x cheaper than float64 on a CPU), float64 for float64 tensors (a norm
    cannot be narrower than its input) and with ``wide`` (again, for a norm that overflowed)."""
    return _wide(t.device) if wide or t.dtype == torch.float64 else torch.float32


def _norms(tensors: list[torch.Tensor], wide: bool = False) -> torch.Tensor:
    """The 2-norms of ``tensors``, on the first one's device: one batched call per device and
    dtype (see :func:`_norm_dtype` for the precision)."""
    if not tensors:
        return torch.zeros(0)
    groups: dict = defaultdict(list)
    for i, t in enumerate(tensors):
        groups[(t.device, t.dtype)].append(i)
    if len(groups) == 1:
        return torch.stack(torch._foreach_norm(tensors, 2, dtype=_norm_dtype(tensors[0], wide)))
    out = torch.empty(len(tensors), dtype=_wide(tensors[0].device), device=tensors[0].device)
    for index in groups.values():
        out[index] = _norms([tensors[i] for i in index], wide).to(out)
    return out


def total_norm(values) -> float:
    """The 2-norm of per-tensor norms (None skipped): Inf or NaN as soon as one is."""
    total = 0.0
    for v in values:
        if v is None:
            continue
        if not math.isfinite(v):
            return math.nan if math.isnan(v) else math.inf
        total += v * v
    return math.sqrt(total)


# autograd nodes that pass gradients through unchanged (views, transposes, copies)
_VIEW_NODES = frozenset(
    {"TBackward0", "ViewBackward0", "ReshapeAliasBackward0", "UnsafeViewBackward0", "PermuteBackward0"}
    | {"TransposeBackward0", "TransposeBackward1", "UnsqueezeBackward0", "SqueezeBackward0", "SqueezeBackward1"}
    | {"SqueezeBackward2", "AliasBackward0", "CloneBackward0", "ExpandBackward0", "SelectBackward0"}
    | {"SliceBackward0", "AsStridedBackward0", "ToCopyBackward0"}
)


# autograd nodes that cannot make a non-finite gradient from finite ones except by overflow (an
# explosion, judged by its own check): their gradients are not probed, their order still counts
_LINEAR_NODES = frozenset(
    {"AddBackward0", "AddBackward1", "SubBackward0", "SubBackward1", "NegBackward0", "MeanBackward0"}
    | {"MeanBackward1", "SumBackward0", "SumBackward1", "ReluBackward0", "ThresholdBackward0", "AddmmBackward0"}
    | {"MmBackward0", "BmmBackward0", "ConvolutionBackward0", "MaxPool2DWithIndicesBackward0", "CatBackward0"}
    | {"StackBackward0", "IndexBackward0", "GatherBackward0", "EmbeddingBackward0"}
)


def _through_views(node: Any) -> Any:
    """The first node below ``node`` that is not a view (None past the graph's end)."""
    while node is not None and type(node).__name__ in _VIEW_NODES and len(node.next_functions) == 1:
        node = node.next_functions[0][0]
    return node


def _merge(probes: list) -> torch.Tensor | None:
    probes = [p for p in probes if p is not None]
    if not probes:
        return None
    return probes[0] if len(probes) == 1 else torch.cat([p.to(probes[0].dtype) for p in probes])


def _rms(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    n = max(t.numel(), 1)
    return torch.linalg.vector_norm(t, dtype=_norm_dtype(t)).to(torch.float32) / math.sqrt(n)


def _arg(args: tuple, kwargs: dict, i: int, name: str) -> Any:
    return args[i] if len(args) > i else kwargs.get(name)


def _counts(*values: torch.Tensor) -> torch.Tensor:
    return torch.stack([v.detach().to(torch.float32).reshape(()) for v in values])


def _evidence(op: str, args: tuple, kwargs: dict, outs: list[torch.Tensor]) -> torch.Tensor | None:
    """Counts at the singular points of an operation's value or derivative (read only when
    needed): see :func:`gradwise.doctor._checks.nonfinite` for their meaning."""
    x = args[0] if args and isinstance(args[0], torch.Tensor) else None
    base = op.rstrip("_")
    if base in ("log", "log2", "log10", "sqrt", "rsqrt") and x is not None:
        x = x.detach()
        return _counts((x == 0).sum(), (x < 0).sum(), torch.isnan(x).sum())
    if base == "log1p" and x is not None:
        x = x.detach()
        return _counts((x == -1).sum(), (x < -1).sum(), torch.isnan(x).sum())
    if base in ("pow", "__pow__", "float_power") and x is not None:
        x = x.detach()
        return _counts((x == 0).sum(), (x < 0).sum(), x.abs().amax() if x.numel() else x.new_zeros(()))
    if base in ("exp", "expm1", "exp2", "cosh", "sinh") and x is not None and x.numel():
        return _counts(x.detach().amax())
    if base in ("acos", "asin", "atanh", "arccos", "arcsin", "arctanh") and x is not None:
        a = x.detach().abs()
        return _counts((a == 1).sum(), (a > 1).sum(), torch.isnan(a).sum())
    if base in _DIVISIONS:
        if base == "__rtruediv__":
            num, den = _arg(args, kwargs, 1, "other"), x
        elif base == "reciprocal":
            num, den = 1.0, x
        else:
            num, den = x, _arg(args, kwargs, 1, "other")
        if isinstance(den, torch.Tensor):
            zero = den.detach() == 0
            both = zero & (num.detach() == 0) if isinstance(num, torch.Tensor) else zero & (num == 0)
            return _counts(zero.sum(), both.sum())
        if isinstance(den, int | float) and den == 0:
            return None
        return None
    if base in ("std", "var", "std_mean", "var_mean") and outs:
        return _counts((outs[0].detach() == 0).sum())
    if base in ("softmax", "log_softmax", "logsumexp", "softmin", "amax", "max") and x is not None and x.dim():
        dim = _arg(args, kwargs, 1, "dim")
        dim = -1 if dim is None else dim
        if isinstance(dim, int):
            rows = (x.detach() == -math.inf).all(dim)
            return _counts(rows.sum(), torch.tensor(rows.numel(), device=x.device))
    return None


@dataclass(slots=True, eq=False)
class OpRecord:
    """One recorded operation with a floating output, or an input that no recorded operation
    of the step produced (``source`` set: a parameter, a buffer, data)."""

    index: int
    op: str
    site: Site | None
    inputs: tuple[int, ...]  # the records its floating tensor inputs came from
    refs: tuple  # weak references to those inputs
    out: Any  # a weak reference to its first floating output
    scalars: tuple  # the Python numbers among its arguments
    layer: tuple  # the parameters of the nearest linear map upstream (its own, for a linear map)
    evidence: torch.Tensor | None = None
    source: str | None = None  # "parameter", "buffer", "data" for an input record
    param: Param | None = None
    dtype: torch.dtype | None = None
    shape: tuple = ()
    kept: torch.Tensor | None = None  # a small divisor, kept for the explanation (which columns are 0)

    def input(self, i: int) -> torch.Tensor | None:
        ref = self.refs[i] if i < len(self.refs) else None
        return None if ref is None else ref()

    def output(self) -> torch.Tensor | None:
        return None if self.out is None else self.out()


@dataclass(eq=False)
class ActivationRecord:
    """One ReLU-family call site (a module or a functional call), across steps."""

    site: Site | None
    module: Any  # weak reference to the nn.ReLU module that ran it, or None
    layer: tuple  # parameters of the layer feeding it
    made: Site | None = None  # the module's construction line
    first: torch.Tensor | None = None  # bool [units]: active for some sample in the first step seen
    recent: list = field(default_factory=list)  # the same in each of the last two later steps
    first_step: int = -1
    last_step: int = -1
    later_steps: int = 0


@dataclass
class UpdateRecord:
    """One optimizer step's update: per-parameter norms of (after - before), and the weights' norms."""

    optimizer: OptimizerRecord
    step: int
    params: list
    norms: torch.Tensor | None  # [n] on the device: the update's norm per parameter
    grads_changed: bool = False  # gradients changed in place between the backward and the step (clipping)
    values: list | None = None  # read: [(update, weight before the step)] per parameter


@dataclass
class StepNumbers:
    """What was read after one watched backward()."""

    step: int
    loss: float | None
    scaled: bool  # the loss was scaled by a GradScaler
    grad: dict  # Param -> gradient norm (float; nan/inf where not finite)
    weight: dict  # Param -> weight norm
    order: dict  # Param -> position of its first use in the step's operations
    gains: list  # [(params, output rms, site)] of the linear maps on parameters, in order
    rnn_growth: list  # [(params, last / first time step rms)] of unbounded recurrent ops
    saturation: list  # [(op, site, saturated fraction)] of sigmoid/tanh calls
    nonfinite: list  # parameters whose gradient holds NaN/Inf


class Stats:
    """The numbers of one watch (see the module docstring)."""

    def __init__(self, doctor: Doctor):
        self.doctor = doctor
        self.history: list[StepNumbers] = []
        self.updates: list[UpdateRecord] = []
        self.activations: dict[tuple, ActivationRecord] = {}
        self.init_sites: dict = {}  # Param -> Site of the last in-place write of a parameter outside a step
        self.scaled = WeakTensorKeyDictionary()  # GradScaler.scale(loss) -> loss
        self.node_sums: list = []
        self.producers: dict = {}
        self._hooks: list = []
        self._before_step: dict = {}
        self._buffers: dict = {}  # optimizer key -> tensors the parameters are copied into before a step
        self._grad_versions: dict = {}  # id(param) -> (id(grad), its version) after the last backward
        self.loss_finite = True
        self.loss_value: float | None = None
        self.grads_finite = True
        self._new_step()

    # --- one step's records ---------------------------------------------------------------

    def _new_step(self) -> None:
        self.ops: list[OpRecord] = []
        self.sums: list = []
        self.producer = WeakTensorKeyDictionary()
        self.node_op: dict[int, int] = {}  # id(grad_fn) -> index of the record that made it
        self.order: dict = {}
        self.gains: list = []
        self.rnn: list = []
        self.saturation: list = []
        self._occurrence: dict = defaultdict(int)
        self.parents: dict[int, Any] = {}
        self.node_ids: list = []

    def _record(self, op: str, site, inputs, refs, outs, scalars, layer, probe: bool = True, **extra) -> OpRecord:
        first = outs[0] if outs else None
        rec = OpRecord(
            len(self.ops),
            op,
            site,
            inputs,
            refs,
            None if first is None else weakref.ref(first),
            scalars,
            layer,
            dtype=None if first is None else first.dtype,
            shape=() if first is None else tuple(first.shape),
            **extra,
        )
        self.ops.append(rec)
        self.sums.append(_merge([_probe(o) for o in outs]) if probe else None)
        return rec

    def _source(self, t: torch.Tensor, site) -> int:
        """The record of an input no recorded operation of this step produced."""
        prov = self.doctor.provenance
        p = prov.known(t) if t.requires_grad and grad_fn(t) is None else None
        kind = "parameter" if p is not None else "data"
        # a parameter is probed only when needed (op_values): it is alive, and unchanged within the step
        rec = self._record("<input>", site, (), (), [t], (), (), probe=p is None, source=kind, param=p)
        if p is not None:
            self.order.setdefault(p, len(self.order))
        self.producer[t] = rec.index
        return rec.index

    def _became_param(self, t: torch.Tensor) -> bool:
        """Whether a leaf last recorded as something else (a layer's weight written by its
        default init before its model was known) is now a known parameter."""
        return grad_fn(t) is None and self.doctor.provenance.known(t) is not None

    def on_op(self, ev: OpEvent) -> None:
        outs = [o for o in ev.outputs if _floating(o)]
        mutated = ev.mutated
        if mutated is not None and _floating(mutated) and all(o is not mutated for o in outs):
            outs.append(mutated)
        if not outs or self.doctor.done:
            return
        op = ev.op
        inputs, refs, params, layer = [], [], [], ()
        producer = self.producer
        for t in ev.inputs:
            if not _floating(t):
                continue
            idx = producer.get(t)
            if idx is None or (t.requires_grad and self.ops[idx].param is None and self._became_param(t)):
                idx = self._source(t, ev.site)
            inputs.append(idx)
            refs.append(weakref.ref(t))
            rec = self.ops[idx]
            if rec.param is not None:
                params.append(rec.param)
            elif not layer and rec.layer:
                layer = rec.layer
        if op in ALIASES and len(inputs) == 1 and len(outs) == 1 and outs[0] is not mutated:
            producer[outs[0]] = inputs[0]  # the same elements: the input's record stands for it
            return
        if params and (op in LINEAR_MAPS or op in RNN_OPS):
            layer = tuple(params)
        scalars = tuple(a for a in ev.args if isinstance(a, int | float) and not isinstance(a, bool))
        scalars += tuple(v for v in ev.kwargs.values() if isinstance(v, int | float) and not isinstance(v, bool))
        evidence = _evidence(op, ev.args, ev.kwargs, outs)
        rec = self._record(op, ev.site, tuple(inputs), tuple(refs), outs, scalars, layer, evidence=evidence)
        if evidence is not None and op in _DIVISIONS:
            den = ev.args[0] if op in ("reciprocal", "__rtruediv__") else _arg(ev.args, ev.kwargs, 1, "other")
            if isinstance(den, torch.Tensor) and den.numel() <= 4096:
                rec.kept = den.detach()
        for o in outs:
            producer[o] = rec.index
            if o.requires_grad:
                fn = grad_fn(o)
                if fn is not None and fn is not UNREADABLE:
                    self.node_op.setdefault(id(fn), rec.index)
        if params and op in LINEAR_MAPS:
            self.gains.append((tuple(params), _rms(outs[0]), ev.site))
        elif params and op in RNN_OPS:
            self._rnn_growth(tuple(params), ev.args, outs[0])
        if op in SATURATING:
            o = outs[0].detach()
            tail = (o.abs() > 0.99) if op.startswith("tanh") else ((o < 0.01) | (o > 0.99))
            self.saturation.append((op, ev.site, tail.float().mean()))
        elif op in RELU_FAMILY:  # also in the numerics-only steps: dead units are judged over all of them
            self._activation(ev, outs[0], rec)
        if not self.history:
            written = mutated if mutated is not None else ev.kwargs.get("tensor")  # nn.init.*(tensor=...)
            if isinstance(written, torch.Tensor):
                self._init_write(written, ev.site)

    def _init_write(self, t: torch.Tensor, site) -> None:
        """An in-place write to a parameter (``nn.init.*``, ``weight.data.mul_(10)``) before it trained."""
        prov = self.doctor.provenance
        p = prov.known(t) or prov.param_of_alias(t)
        if p is None and isinstance(t, torch.nn.Parameter):
            p = prov.param(t)
        if p is not None and not _called_by_torch():
            self.init_sites[p] = site  # the user's own init (not a layer's default reset_parameters)

    def _rnn_growth(self, params: tuple, args: tuple, out: torch.Tensor) -> None:
        batch_first = args[-1] if args and isinstance(args[-1], bool) else False
        if out.dim() != 3:
            return
        time = 1 if batch_first else 0
        if out.shape[time] < 2:
            return
        first, last = out.detach().select(time, 0), out.detach().select(time, -1)
        self.rnn.append((params, _rms(last) / _rms(first).clamp_min(1e-30)))

    def _activation(self, ev: OpEvent, out: torch.Tensor, rec: OpRecord) -> None:
        o = out.detach()
        if o.dim() < 2 or o.numel() == 0:
            return
        stack = self.doctor.module_stack
        module = stack[-1] if stack and isinstance(stack[-1], _RELU_MODULES) else None
        source = self.ops[rec.inputs[0]] if rec.inputs else None
        channels = o.dim() >= 4 or (o.dim() == 3 and source is not None and source.op in _NORMS)
        unit = 1 if channels else o.dim() - 1
        key0 = (ev.site, None if module is None else id(module))
        n = self._occurrence[key0]
        self._occurrence[key0] = n + 1
        key = (*key0, n)
        act = self.activations.get(key)
        units = o.shape[unit]
        if act is None or act.first is None or act.first.numel() != units:
            made = None if module is None else self.doctor.construction_site(module)
            act = ActivationRecord(ev.site, None if module is None else weakref.ref(module), rec.layer, made)
            self.activations[key] = act
        # a unit is active when its largest output over the batch (and positions) is > 0: one reduction
        active = o.amax(dim=tuple(d for d in range(o.dim()) if d != unit)) > 0
        step = self.doctor.steps
        if act.first is None or act.first_step == step:
            act.first = active if act.first is None else act.first | active
            act.first_step = step
        elif act.last_step == step and act.recent:
            act.recent[-1] = act.recent[-1] | active
        else:
            act.recent = [*act.recent[-1:], active]
            act.later_steps += 1
        act.last_step = step
        if not act.layer and rec.layer:
            act.layer = rec.layer

    # --- backward ---------------------------------------------------------------------------

    def root_loss(self, root: torch.Tensor) -> torch.Tensor:
        """The loss a GradScaler scaled into ``root``, else ``root``."""
        return self.scaled.get(root, root)

    def before_backward(self, event: BackwardEvent) -> None:
        """Read whether the loss is finite (one transfer); hook the graph's nodes."""
        roots = [r for r in event.roots if r.is_floating_point()]
        self.is_scaled = any(r in self.scaled for r in roots)
        self.loss_finite, self.loss_value = True, None
        if roots:
            losses = [self.root_loss(r).detach() for r in roots]
            total = sum(loss.sum(dtype=_wide(loss.device)).cpu().to(torch.float64) for loss in losses)
            value = float(total)
            self.loss_value = value
            self.loss_finite = math.isfinite(value)

    def hook_graph(self, roots: list[torch.Tensor]) -> None:
        """Take the extremes of the gradients each node of the graph below ``roots`` produces
        during this backward, in execution order (removed when it ends). Views pass gradients
        through unchanged and are not hooked; a parameter's gradient is not probed here (its
        norm, read after the backward, says whether it is finite), only the node that made it
        is remembered (``producers``)."""
        self.node_sums = []
        self.producers = producers = defaultdict(list)  # id(parameter) -> indices of the nodes that made its grad
        sums = self.node_sums
        ids = self.node_ids

        def make(index: int, probed: tuple[int, ...]):
            def hook(grad_inputs, grad_outputs):
                total = _merge(
                    [
                        _probe(g)
                        for i, g in enumerate(grad_inputs)
                        if i in probed
                        and isinstance(g, torch.Tensor)
                        and g.layout == torch.strided
                        and g.is_floating_point()
                    ]
                )
                sums.append((index, total))  # None: ran, nothing probed (its order still counts)

            return hook

        seen: set[int] = set()
        stack = [(r.grad_fn, None) for r in roots if r.grad_fn is not None]
        while stack:
            node, parent = stack.pop()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            index = len(ids)
            ids.append(id(node))
            self.parents[id(node)] = parent
            name = type(node).__name__
            if name != "AccumulateGrad" and name not in _VIEW_NODES:
                probed = []
                for i, (n, _) in enumerate(node.next_functions):
                    leaf = _through_views(n)
                    if leaf is not None and type(leaf).__name__ == "AccumulateGrad":
                        producers[id(leaf.variable)].append(index)
                    elif name not in _LINEAR_NODES:
                        probed.append(i)
                self._hooks.append(node.register_hook(make(index, tuple(probed))))
            stack.extend((n, id(node)) for n, _ in node.next_functions)

    def end_backward(self) -> None:
        hooks, self._hooks = self._hooks, []
        for h in hooks:
            h.remove()

    def after_backward(self, event: BackwardEvent) -> None:
        """Read the norms of the parameters the backward reached and the step's activation
        figures (one transfer per device)."""
        self.end_backward()
        with_grad = []
        for p in event.reached:
            t = p.tensor()
            if t is not None and t.grad is not None and t.grad.layout == torch.strided:
                with_grad.append((p, t))
        self._grad_versions = {id(t): (id(t.grad), t.grad._version) for _, t in with_grad}
        groups: dict = defaultdict(list)
        for p, t in with_grad:
            groups[(t.device, t.dtype)].append((p, t))
        parts, names = [], []
        for members in groups.values():
            ts = [t for _, t in members]
            parts.append(_norms([t.grad.detach() for t in ts]))
            parts.append(_norms([t.detach() for t in ts]))
            names.append([p for p, _ in members])
        extras = [rms for _, rms, _ in self.gains] + [g for _, g in self.rnn] + [f for _, _, f in self.saturation]
        if extras:
            parts.append(torch.stack([e.to(torch.float32).reshape(()).to(extras[0].device) for e in extras]))
        values = read(parts)
        for k, members in enumerate(groups.values()):  # a float32 norm overflows above ~1.8e19: again, in float64
            for row, tensors in ((2 * k, [t.grad for _, t in members]), (2 * k + 1, [t for _, t in members])):
                over = [i for i, v in enumerate(values[row]) if math.isinf(v)]
                if over:
                    again = read([_norms([tensors[i].detach() for i in over], wide=True)])[0]
                    for i, v in zip(over, again, strict=True):
                        values[row][i] = v
        grads, weights = {}, {}
        for k, members in enumerate(names):
            for p, g, w in zip(members, values[2 * k], values[2 * k + 1], strict=True):
                grads[p], weights[p] = g, w
        it = iter(values[-1] if extras else ())
        gains = [(ps, next(it), site) for ps, _, site in self.gains]
        rnn = [(ps, next(it)) for ps, _ in self.rnn]
        saturation = [(op, site, next(it)) for op, site, _ in self.saturation]
        nonfinite = [p for p, v in grads.items() if not math.isfinite(v)]
        self.grads_finite = not nonfinite
        if len(self.history) >= _HISTORY:
            del self.history[_HISTORY // 4]  # keep the first steps and the latest ones
        self.history.append(
            StepNumbers(
                event.step,
                self.loss_value,
                self.is_scaled,
                grads,
                weights,
                dict(self.order),
                gains,
                rnn,
                saturation,
                nonfinite,
            )
        )

    def next_step(self) -> None:
        """Called when a watched backward() ended: the next operations belong to the next step."""
        self._new_step()
        self.node_sums = []

    # --- tracing back -----------------------------------------------------------------------

    def op_values(self) -> list[float | None]:
        """For each record, its output's element of largest size (finite exactly when they all
        are; NaN when they hold a NaN), with one transfer per device."""
        for rec in self.ops:  # the parameters, probed now
            if rec.source == "parameter" and self.sums[rec.index] is None:
                t = rec.output()
                self.sums[rec.index] = None if t is None else _probe(t)
        index: list[int] = [i for i, s in enumerate(self.sums) if s is not None]
        values = read([self.sums[i] for i in index])
        out: list[float | None] = [None] * len(self.sums)
        for i, v in zip(index, values, strict=True):
            out[i] = math.nan if any(math.isnan(x) for x in v) else max(v, key=abs)
        return out

    def first_nonfinite_node(self, params=()) -> OpRecord | None:
        """The record of the forward operation whose backward produced the first non-finite
        gradient (in execution order): that node's own operation, or the nearest recorded one
        above it (an operation made of several nodes). ``params``: the parameters whose
        gradient is not finite (the nodes that made their gradients are candidates too)."""
        if not self.node_sums:
            return None
        position = {index: k for k, (index, _) in enumerate(self.node_sums)}
        by_device: dict = defaultdict(list)
        for k, (_, s) in enumerate(self.node_sums):
            if s is not None:
                by_device[s.device].append(k)
        first = None
        for ks in by_device.values():
            values = torch.stack([torch.isfinite(self.node_sums[k][1]).all() for k in ks]).tolist()
            bad = [k for k, v in zip(ks, values, strict=True) if not v]
            if bad and (first is None or bad[0] < first):
                first = bad[0]
        for p in params:
            t = p.tensor()
            made = [position[i] for i in self.producers.get(id(t), ()) if i in position] if t is not None else []
            if made and (first is None or min(made) < first):
                first = min(made)
        if first is None:
            return None
        node_id = self.node_ids[self.node_sums[first][0]]
        current: Any = node_id
        while current is not None:
            idx = self.node_op.get(current)
            if idx is not None:
                return self.ops[idx]
            current = self.parents.get(current)
        return None

    # --- optimizer steps --------------------------------------------------------------------

    def before_step(self, event: StepEvent) -> None:
        """Copy the parameters into a buffer kept for the optimizer (allocated once: a fresh
        copy at every step costs ten times more), and see whether their gradients were changed
        in place since the backward (``clip_grad_norm_``) by their version counters."""
        key = event.optimizer.key
        tensors = [p.tensor() for p in event.params]
        pairs = [
            (p, t) for p, t in zip(event.params, tensors, strict=True) if t is not None and t.layout == torch.strided
        ]
        if (
            not pairs
            or sum(t.numel() for _, t in pairs) > _UPDATE_LIMIT
            or not _dense(event.optimizer.steps)
            or len({t.device for _, t in pairs}) > 1
        ):
            self._before_step.pop(key, None)
            return
        values = [t.detach() for _, t in pairs]
        buffer = self._buffers.get(key)
        if buffer is None or [(b.shape, b.dtype, b.device) for b in buffer] != [
            (v.shape, v.dtype, v.device) for v in values
        ]:
            buffer = self._buffers[key] = [torch.empty_like(v) for v in values]
        torch._foreach_copy_(buffer, values)
        versions = self._grad_versions
        changed = any(
            id(t) in versions and (t.grad is None or versions[id(t)] != (id(t.grad), t.grad._version)) for _, t in pairs
        )
        self._before_step[key] = (pairs, buffer, changed)

    def after_step(self, event: StepEvent) -> None:
        saved = self._before_step.pop(event.optimizer.key, None)
        if saved is None:
            return
        pairs, buffer, changed = saved
        torch._foreach_sub_(buffer, [t.detach() for _, t in pairs])  # in place: before - after = -update
        if len(self.updates) >= _HISTORY:
            del self.updates[_HISTORY // 4]
        self.updates.append(UpdateRecord(event.optimizer, event.step, [p for p, _ in pairs], _norms(buffer), changed))

    def read_updates(self) -> list[UpdateRecord]:
        """Every optimizer step's update norms, read (once), with the weights' norms read after
        the backward before it."""
        after = {n.step: n for n in self.history}
        for u in self.updates:
            if u.values is None and u.norms is not None:
                numbers = after.get(u.step - 1)
                weights = numbers.weight if numbers is not None else {}
                u.values = [(d, weights.get(p, math.nan)) for p, d in zip(u.params, u.norms.tolist(), strict=True)]
        return [u for u in self.updates if u.values is not None]

    def release(self) -> None:
        """Free the parameters' copies (the watch ended)."""
        self._buffers.clear()
        self._before_step.clear()


def read(parts: list[torch.Tensor]) -> list[list[float]]:
    """The values of tensors as flat lists of floats, with one transfer per device."""
    by_device: dict = defaultdict(list)
    for i, t in enumerate(parts):
        by_device[t.device].append(i)
    out: list = [None] * len(parts)
    for idx in by_device.values():
        wide = _wide(parts[idx[0]].device)
        flat = torch.cat([parts[i].reshape(-1).to(wide) for i in idx]).tolist()
        at = 0
        for i in idx:
            n = parts[i].numel()
            out[i], at = flat[at : at + n], at + n
    return out
