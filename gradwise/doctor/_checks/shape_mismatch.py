"""shape-mismatch: the watched code crashed on a shape error (a view of an invalid size, a
linear layer or matrix product whose sizes do not fit, cat/stack of unequal tensors, a loss
target of the wrong size, ...). Reported at the innermost user line of the traceback, with
the call as written there, each operand's shape and where it came from (the layers and
operations that made it), the figures that disagree and the fix. The error is re-raised
unchanged; an error the user's code catches and handles is no finding.

Where a tensor came from is kept cheaply, as it is made: a weakly keyed map from each tensor
that a shape-defining operation (a layer, a view, a cat, a creation, ...) made to a small
record (the op, the user line, the torch layer it ran in, the shape, the record of its
input); an operation that keeps its input's shape passes the input's record on. Failures
are explained when the op raises (``on_op_error``: the operands and the module stack are
there), and reported only if the watched code then ends with that same exception (or one
caused by it). A shape error that no recorded op raised (a recurrent layer's own check in
Python, or an op after the watched steps) is explained from its traceback.
"""

from __future__ import annotations

import ast
import dis
import linecache
import os
import re
import types
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.weak import WeakTensorKeyDictionary

from gradwise._frames import is_library
from gradwise.doctor._checks import Check
from gradwise.doctor._provenance import OpEvent
from gradwise.doctor._shapes import Failure, Layer, Operand, explain, fmt, generic, is_loss, is_shape_error
from gradwise.doctor._trace import Site, statement_at, user_frame

# operations whose results can end up as operands of a failing op; the shape-keeping ones pass
# their input's record on, the others (and every op in _PRODUCERS) make a record
_CREATE = {"tensor", "as_tensor", "asarray", "randn", "rand", "randint", "randperm", "normal", "zeros", "ones"}
_CREATE |= {"full", "empty", "arange", "linspace", "logspace", "eye", "zeros_like", "ones_like", "full_like"}
_CREATE |= {"randn_like", "rand_like", "randint_like", "empty_like", "new_zeros", "new_ones", "new_full", "new_empty"}
_CREATE |= {"new_tensor", "bernoulli", "multinomial", "one_hot"}
_LAYOUT = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "transpose", "permute", "t", "T", "mT"}
_LAYOUT |= {"swapaxes", "swapdims", "movedim", "moveaxis", "expand", "expand_as", "repeat", "repeat_interleave"}
_LAYOUT |= {"tile", "view_as", "reshape_as", "contiguous", "chunk", "split", "unbind", "tensor_split", "narrow"}
_LAYOUT |= {"__getitem__", "select", "index_select", "gather", "masked_select", "take_along_dim", "roll", "flip"}
_LAYOUT |= {"cat", "concat", "concatenate", "stack", "hstack", "vstack", "dstack", "column_stack", "pad", "unfold"}
_LAYERS = {"linear", "bilinear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d"}
_LAYERS |= {"conv_transpose3d", "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d"}
_LAYERS |= {"adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d"}
_LAYERS |= {"adaptive_max_pool2d", "max_pool2d_with_indices", "lp_pool2d", "interpolate", "upsample", "pixel_shuffle"}
_LAYERS |= {"embedding", "embedding_bag", "lstm", "gru", "rnn_tanh", "rnn_relu", "multi_head_attention_forward"}
_LAYERS |= {"scaled_dot_product_attention", "matmul", "__matmul__", "__rmatmul__", "mm", "spmm", "bmm", "addmm"}
_LAYERS |= {"baddbmm", "einsum", "outer", "mv", "tensordot", "fold"}
_REDUCE = {"sum", "mean", "max", "min", "amax", "amin", "argmax", "argmin", "prod", "std", "var", "norm", "logsumexp"}
_REDUCE |= {"topk", "sort", "argsort", "cumsum", "median", "mode", "all", "any", "count_nonzero", "nansum", "nanmean"}
_ELEMENTWISE = {"add", "sub", "mul", "div", "true_divide", "pow", "neg", "abs", "exp", "log", "sqrt", "rsqrt"}
_ELEMENTWISE |= {"__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__"}
_ELEMENTWISE |= {"__pow__", "__neg__", "__and__", "__or__", "__invert__", "__eq__", "__ne__", "__lt__", "__gt__"}
_ELEMENTWISE |= {"__le__", "__ge__", "eq", "ne", "lt", "gt", "le", "ge", "where", "masked_fill", "clamp", "clip"}
_ELEMENTWISE |= {"sigmoid", "tanh", "relu", "gelu", "silu", "elu", "leaky_relu", "softplus", "mish", "relu6", "selu"}
_ELEMENTWISE |= {"hardtanh", "softmax", "log_softmax", "dropout", "dropout1d", "dropout2d", "batch_norm"}
_ELEMENTWISE |= {"layer_norm", "group_norm", "instance_norm", "rms_norm", "normalize", "float", "double", "half"}
_ELEMENTWISE |= {"bfloat16", "long", "int", "bool", "to", "type", "type_as", "clone", "detach", "cpu", "cuda"}
_ELEMENTWISE |= {"maximum", "minimum", "lerp", "addcmul", "addcdiv", "sin", "cos", "erf", "sign", "round", "floor"}
_ELEMENTWISE |= {"ceil", "square", "reciprocal", "nan_to_num", "log1p", "expm1", "logical_not", "logical_and"}
_TRACKED = frozenset(_CREATE | _LAYOUT | _LAYERS | _REDUCE | _ELEMENTWISE)
_PRODUCERS = frozenset(_CREATE | _LAYERS | {"transpose", "permute", "t", "T", "mT", "swapaxes", "movedim"})
_JOIN_OPS = frozenset({"cat", "concat", "concatenate", "stack", "hstack", "vstack", "dstack", "column_stack"})
_HISTORY = 8  # records shown (and kept) behind a tensor
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_LAYER_ATTRS = (
    "in_features",
    "out_features",
    "in_channels",
    "out_channels",
    "kernel_size",
    "num_features",
    "normalized_shape",
    "input_size",
    "hidden_size",
    "num_layers",
    "bidirectional",
    "batch_first",
    "embed_dim",
    "num_heads",
    "num_embeddings",
    "embedding_dim",
)
_BINOPS = {
    ast.MatMult: ("matmul", "__matmul__", "__rmatmul__"),
    ast.Add: ("add", "__add__", "__radd__"),
    ast.Sub: ("sub", "__sub__", "__rsub__"),
    ast.Mult: ("mul", "__mul__", "__rmul__"),
    ast.Div: ("div", "true_divide", "__truediv__", "__rtruediv__"),
}
_ALIASES = {"spmm": ("mm", "spmm"), "T": ("T",), "mT": ("mT",)}
_RAISES = frozenset(dis.opmap[name] for name in ("RAISE_VARARGS", "RERAISE") if name in dis.opmap)
_MISSING = object()
_GRADWISE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) + os.sep
_builtin_cache: dict[type, bool] = {}


@dataclass(slots=True, eq=False)
class _Made:
    """How a tensor was made: the op, the user line, the torch layer it ran in, its shape,
    and the record of its (first) input."""

    op: str
    site: Site | None
    shape: tuple[int, ...]
    layer: weakref.ref | None
    parent: _Made | None
    depth: int


@dataclass
class _Recorded:
    """An op's shape error, explained when it was raised."""

    error: BaseException | None  # held until the watch ends, to tell it from a later one
    fingerprint: tuple
    failure: Failure
    site: Site | None
    step: int | None
    params: list


class ShapeMismatch(Check):
    kind = "shape-mismatch"
    order = 45
    ops = _TRACKED

    def __init__(self, doctor):
        super().__init__(doctor)
        self._made = WeakTensorKeyDictionary()
        self._failures: deque[_Recorded] = deque(maxlen=4)

    # --- where tensors come from ------------------------------------------------------------

    def on_op(self, event: OpEvent) -> None:
        outputs = event.outputs
        if not outputs or event.mutated is not None:
            return
        inputs, op, made = event.inputs, event.op, self._made
        first = inputs[0] if inputs else None
        parent = made.get(first) if first is not None else None
        try:
            same = len(outputs) == 1 and first is not None and outputs[0].shape == first.shape
            shapes = [out.shape for out in outputs]
        except RuntimeError:  # a nested tensor (a transformer's fast path) has no shape
            return
        if op not in _PRODUCERS and same:
            if parent is not None:
                made[outputs[0]] = parent  # same shape: where it came from is where its input came from
            return
        layer = None
        stack = self.doctor.module_stack
        if stack:
            for module in reversed(stack):  # the torch layer the user's line called (not a container)
                if not _builtin(type(module)):
                    break
                if not isinstance(module, _CONTAINERS):
                    layer = module
        depth = 0 if parent is None else parent.depth + 1
        if depth and depth % (2 * _HISTORY) == 0:  # keep chains short: forget what lies far behind
            node = parent
            for _ in range(_HISTORY):
                node = node.parent if node is not None else None
            if node is not None:
                node.parent = None
        ref = None if layer is None else weakref.ref(layer)
        for out, shape in zip(outputs, shapes, strict=True):
            made[out] = _Made(op, event.site, shape, ref, parent, depth)

    # --- failures ---------------------------------------------------------------------------

    def on_op_error(self, event: OpEvent, error: BaseException) -> None:
        if not is_shape_error(error):
            return
        stack = list(self.doctor.module_stack)
        failing = stack[-1] if stack and _builtin(type(stack[-1])) else None
        frame = user_frame()
        tensors = _operand_tensors(event.args, event.kwargs)
        options = {}
        if event.op == "einsum" and event.args and isinstance(event.args[0], str):
            options["equation"] = event.args[0]
        if event.op in _JOIN_OPS:
            dim = event.kwargs.get("dim", event.args[1] if len(event.args) > 1 else 0)
            options["dim"] = dim if isinstance(dim, int) else 0
        called = _called(stack)
        lasti = frame.f_lasti if frame is not None else -1
        failure, params = self._failure(
            event.op, event.site, frame, tensors, failing, called, str(error), options, lasti
        )
        self._failures.append(_Recorded(error, _fingerprint(error), failure, event.site, event.step + 1, params))

    def on_crash(self, error: BaseException) -> None:
        chain = _chain(error)
        for exc in chain:
            for rec in reversed(self._failures):
                if rec.error is exc or (rec.error is None and rec.fingerprint == _fingerprint(exc)):
                    self._report(rec)
                    return
        for exc in chain:
            if is_shape_error(exc):
                rec = self._from_traceback(exc)
                if rec is not None:
                    self._report(rec)
                    return

    def finish(self) -> None:
        for rec in self._failures:
            rec.error = None  # the user's exception (and the frames its traceback holds) is not kept

    def _report(self, rec: _Recorded) -> None:
        try:
            found = explain(rec.failure)
        except Exception as exc:  # a message of an unforeseen form: count it, say the shapes
            self.doctor.fault("shape-mismatch check (explain)", exc)
            found = generic(rec.failure)
        self.doctor.add(
            self.kind, "error", found.message, rec.site, rec.params, found.fix, step=rec.step, data=found.data
        )

    # --- building the explanation -----------------------------------------------------------

    def _failure(
        self,
        op: str,
        site: Site | None,
        frame: Any,
        tensors: list[tuple[torch.Tensor, int | str | None]],
        failing: nn.Module | None,
        called: nn.Module | None,
        message: str,
        options: dict | None = None,
        lasti: int = -1,
    ) -> tuple[Failure, list]:
        """The failure in the user's terms, from the failing op's tensors (with their argument
        positions) and the user frame at its line."""
        own = set()
        if failing is not None:
            own = {id(t) for t in (*failing.parameters(), *failing.buffers())}
        tensors = [(t, pos) for t, pos in tensors if id(t) not in own]
        node, mode = _call_node(site, op, called, failing, frame, lasti)
        names = _names(node, mode, tensors, frame, site, op)
        layer = self._layer(failing, site) if failing is not None else None
        operands = []
        for (t, _), name in zip(tensors[:6], names, strict=False):
            if name is None:
                name = _placeholder(op, len(operands))
                name = f"{layer.name}'s {name}" if layer is not None else name
            origin = self._origin(t, site, {m for m in (failing, called) if m is not None})
            operands.append(Operand(name, tuple(t.shape), origin, _contiguous(t)))
        call = _source(node, site) if node is not None else f"{op}(...)"
        linears = self._linears(site) if op in ("view", "reshape", "flatten") else ()
        failure = Failure(op, call, _where(site, site), tuple(operands), layer, message, options or {}, linears)
        params = []
        if failing is not None:
            known = (self.doctor.provenance.known(p) for p in failing.parameters(recurse=False))
            params = [p for p in known if p is not None]
        return failure, params

    def _origin(self, t: torch.Tensor, site: Site | None, inside: set | frozenset = frozenset()) -> str:
        """Where ``t`` came from: "made by conv2 (nn.Conv2d(10, 20, 5), line 30) giving (64, 20,
        8, 8), then max_pool2d at line 40" (what the failing layer, or the module the line called,
        did to its input before the op that raised is left out: ``inside``)."""
        rec = self._made.get(t)
        if rec is None:
            info = self.doctor.provenance.info(t)
            if info is None or info.site is None:
                return ""
            return f"made by {_display(info.op)} at {_where(info.site, site)}"
        chain: list[_Made] = []
        node: _Made | None = rec
        rearranged = False
        while node is not None and len(chain) < _HISTORY:
            internal = node.layer is not None and node.layer() in inside
            repeated = chain and chain[-1].op == node.op and chain[-1].site == node.site and node.layer is None
            if internal or repeated:  # the failing layer's own steps; the same op repeated on one line (a loop)
                rearranged = rearranged or (internal and not chain)
                node = node.parent
                continue
            chain.append(node)
            if node.layer is not None and node.layer() is not None:
                break
            node = node.parent
        if not chain:
            return ""
        steps = list(reversed(chain))
        if len(steps) > 4:
            steps = [steps[0], *steps[-3:]]
            skipped = True
        else:
            skipped = False
        parts = []
        for i, step in enumerate(steps):
            module = step.layer() if step.layer is not None else None
            if module is not None:
                layer = self._layer(module, site)
                text = f"{layer.name} ({layer.ctor}" + (f", {layer.made})" if layer.made else ")")
            else:
                text = f"{_display(step.op)} at {_where(step.site, site)}"
            last = i == len(steps) - 1
            if not last or tuple(step.shape) != tuple(t.shape):
                text += f" giving {_fmt(step.shape)}"
            parts.append(text)
            if skipped and i == 0:
                parts.append("...")
        if tuple(steps[-1].shape) != tuple(t.shape):
            parts.append("rearranged inside the layer" if rearranged else "changed in place")
        return "made by " + ", then ".join(parts)

    def _layer(self, module: nn.Module, site: Site | None) -> Layer:
        cls = type(module).__name__
        made = self.doctor.construction_site(module)
        attrs = {}
        for a in _LAYER_ATTRS:
            value = getattr(module, a, None)
            if isinstance(value, bool | int | tuple | list):
                attrs[a] = list(value) if isinstance(value, tuple | list) else value
        extra = module.extra_repr() if _builtin(type(module)) else ""
        ctor = _constructor_text(made, cls, extra) if made is not None else None
        if ctor is None and not _builtin(type(module)):
            ctor = f"{cls}(...)"
        elif ctor is None:
            if not extra:  # nn.MultiheadAttention, nn.TransformerEncoder: no extra_repr
                extra = ", ".join(f"{k}={v}" for k, v in attrs.items())
            ctor = f"nn.{cls}({extra})" if len(extra) <= 60 else f"nn.{cls}(...)"
        return Layer(self._module_name(module), cls, ctor, _where(made, site) if made is not None else "", attrs)

    def _module_name(self, module: nn.Module) -> str:
        models = sorted(self.doctor.models, key=lambda m: m.merged_into is not None)
        for rec in models:
            root = rec.module()
            if root is None:
                continue
            if root is module:
                anonymous = rec.variable is None or rec.variable == _snake(type(module).__name__)
                return f"{type(module).__name__}()" if anonymous else rec.variable
            for qualname, sub in root.named_modules():
                if sub is module and qualname:
                    return _display_qualname(qualname, rec.variable)
        return type(module).__name__

    def _linears(self, site: Site | None) -> tuple[Layer, ...]:
        out = []
        for rec in self.doctor.models:
            root = rec.module()
            if root is None or rec.merged_into is not None:
                continue
            for sub in root.modules():
                if isinstance(sub, nn.Linear) and len(out) < 32:
                    out.append(self._layer(sub, site))
        return tuple(out)

    def _from_traceback(self, error: BaseException) -> _Recorded | None:
        """A shape error that no recorded op raised: the innermost user line of its traceback,
        the torch layer or function it called there, and their tensor arguments."""
        frames = []
        tb = error.__traceback__
        while tb is not None:
            frames.append((tb.tb_frame, tb.tb_lineno, tb.tb_lasti))
            tb = tb.tb_next
        users = [i for i, (f, _, _) in enumerate(frames) if not is_library(f.f_code.co_filename)]
        if not users:
            return None
        u = users[-1]
        frame, line, lasti = frames[u]
        site = Site(frame.f_code.co_filename, line)
        # torch's frames below the user's line (gradwise's own, the recorder, are not the op)
        library = [f for f, _, _ in frames[u + 1 :] if not f.f_code.co_filename.startswith(_GRADWISE)]
        failing = called = None
        tensors: list[tuple[torch.Tensor, int | str | None]] = []
        if not library:
            code = frame.f_code.co_code
            if 0 <= lasti < len(code) and code[lasti] in _RAISES:
                return None  # the user's own raise or assert, not an operation's error
            node = _expression_at(site, frame.f_code, lasti)
            op = _op_of(node) if node is not None else _op_on_line(site)
            if node is None:
                node, _ = _call_node(site, op, None, None, frame)
            tensors = _tensors_of_node(node, frame)
        else:
            entry = library[0]
            owner = entry.f_locals.get("self")
            called = owner if isinstance(owner, nn.Module) else None
            for f in reversed(library):
                candidate = f.f_locals.get("self")
                if isinstance(candidate, nn.Module):
                    failing = candidate
                    break
            op = type(failing).__name__ if failing is not None else entry.f_code.co_name
            tensors = _frame_arguments(entry)
        failure, params = self._failure(op, site, frame, tensors, failing, called, str(error), None, lasti)
        step = None if self.doctor.done else self.doctor.steps + 1
        return _Recorded(None, _fingerprint(error), failure, site, step, params)


# --- helpers ----------------------------------------------------------------------------------


def _builtin(cls: type) -> bool:
    """Whether a module class is torch's own (a layer whose insides are not the user's code)."""
    cached = _builtin_cache.get(cls)
    if cached is None:
        cached = _builtin_cache[cls] = cls.__module__.startswith("torch.")
    return cached


def _snake(name: str) -> str:
    """The name the doctor gives a model held by no variable (``BCEWithLogitsLoss`` ->
    ``b_c_e_with_logits_loss``)."""
    return "".join(f"_{c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(name))


def _called(stack: list[nn.Module]) -> nn.Module | None:
    """The module that the innermost user line called: the one after the innermost module
    of the user's own (whose forward holds that line), or the outermost when all are torch's."""
    user = [i for i, m in enumerate(stack) if not _builtin(type(m))]
    if not user:
        return stack[0] if stack else None
    i = user[-1]
    return stack[i + 1] if i + 1 < len(stack) else None


def _chain(error: BaseException) -> list[BaseException]:
    """The exception, then its causes and contexts, each once."""
    out: list[BaseException] = []
    todo = [error]
    while todo and len(out) < 16:
        exc = todo.pop(0)
        if exc is None or any(exc is e for e in out):
            continue
        out.append(exc)
        todo.extend([exc.__cause__, exc.__context__])
    return out


def _fingerprint(error: BaseException) -> tuple:
    return (id(error), type(error).__name__, str(error))


def _contiguous(t: torch.Tensor) -> bool:
    try:
        return bool(t.is_contiguous())
    except RuntimeError:
        return True


def _fmt(shape) -> str:
    return fmt(tuple(shape))


def _display(op: str) -> str:
    if op == "__getitem__":
        return "indexing"
    if op.startswith("__") and op.endswith("__"):
        return op.strip("_").removeprefix("r") if op.startswith("__r") else op.strip("_")
    return op


def _display_qualname(qualname: str, root: str | None) -> str:
    """``classifier.3`` -> ``classifier[3]``; a top-level ``3`` -> ``model[3]``."""
    out = ""
    for part in qualname.split("."):
        if part.isdigit():
            out = f"{out or root or 'model'}[{part}]"
        else:
            out = f"{out}.{part}" if out else part
    return out


def _where(site: Site | None, ref: Site | None) -> str:
    if site is None:
        return "an unknown line"
    if ref is not None and site.file == ref.file:
        return f"line {site.line}"
    return f"{os.path.basename(site.file)}:{site.line}"


def _placeholder(op: str, i: int) -> str:
    """The name of an operand the source does not name, by its position."""
    if is_loss(op):
        names: tuple[str, ...] = ("input", "target")
    elif op in ("multi_head_attention_forward", "scaled_dot_product_attention", "MultiheadAttention"):
        names = ("query", "key", "value")
    else:
        names = ("input", "other")
    return names[i] if i < len(names) else f"argument {i + 1}"


def _operand_tensors(args: tuple, kwargs: dict) -> list[tuple[torch.Tensor, int | str | None]]:
    """The tensors among an op's arguments, with their positions (a list argument's tensors,
    ``torch.cat([a, b])``, each with its index in the list as ``(position, index)``)."""
    out: list[tuple[torch.Tensor, Any]] = []
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            out.append((a, i))
        elif isinstance(a, list | tuple):
            out.extend((t, (i, j)) for j, t in enumerate(a) if isinstance(t, torch.Tensor))
    for k, v in kwargs.items():
        if isinstance(v, torch.Tensor):
            out.append((v, k))
    return out


def _frame_arguments(frame: Any) -> list[tuple[torch.Tensor, Any]]:
    """The tensor arguments of a library function's frame (``*args`` of a module call)."""
    code = frame.f_code
    count = code.co_argcount + code.co_kwonlyargcount
    names = list(code.co_varnames[:count])
    if code.co_flags & 0x04:  # *args
        names.append(code.co_varnames[count])
    out: list[tuple[torch.Tensor, Any]] = []
    local = frame.f_locals
    for position, name in enumerate(n for n in names if n != "self"):
        value = local.get(name)
        if isinstance(value, torch.Tensor):
            out.append((value, position))
        elif isinstance(value, tuple | list):
            out.extend((t, position + j) for j, t in enumerate(value) if isinstance(t, torch.Tensor))
    return out


def _lookup(expr: ast.expr, frame: Any) -> Any:
    """The value of a name or attribute chain (``x``, ``self.h``) in a frame, read without
    running any code (no properties, no ``__getattr__``)."""
    if frame is None:
        return _MISSING
    if isinstance(expr, ast.Name):
        local = frame.f_locals
        if expr.id in local:
            return local[expr.id]
        return frame.f_globals.get(expr.id, _MISSING)
    if isinstance(expr, ast.Attribute):
        base = _lookup(expr.value, frame)
        if base is _MISSING:
            return _MISSING
        if isinstance(base, nn.Module):
            for store in (base._parameters, base._buffers, base._modules):
                if expr.attr in store:
                    return store[expr.attr]
        try:
            return vars(base).get(expr.attr, _MISSING)
        except TypeError:
            return _MISSING
    return _MISSING


def _source_text(site: Site) -> str:
    return "".join(linecache.getlines(site.file))


def _candidates(site: Site | None) -> list[ast.AST]:
    """The expressions of the statement at ``site`` that span its line, innermost first."""
    if site is None:
        return []
    statement = statement_at(site)
    if statement is None:
        return []
    found = [
        node
        for node in ast.walk(statement)
        if isinstance(node, ast.Call | ast.BinOp | ast.Subscript)
        and node.lineno <= site.line <= (node.end_lineno or node.lineno)
    ]
    # starting on the line first, then the smallest (innermost) span
    return sorted(
        found,
        key=lambda n: (
            n.lineno != site.line,
            (n.end_lineno or n.lineno) - n.lineno,
            (n.end_col_offset or 0) - n.col_offset,
        ),
    )


def _terminal(func: ast.expr) -> str | None:
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return None


def _call_node(
    site: Site | None,
    op: str,
    called: nn.Module | None,
    failing: nn.Module | None,
    frame: Any,
    lasti: int = -1,
) -> tuple[ast.AST | None, str | None]:
    """The expression at ``site`` that ran the failing op, and how its arguments map to the
    op's: ``"op"`` (the op's own call, position by position, a method's receiver first),
    ``"module"`` (the call of the layer that raised: its arguments are the layer's inputs), or
    None (a call of a module that ran the failing layer inside, or of something else: the
    operands are named only where an argument holds them). The expression the frame was
    executing is taken where the interpreter says it (Python 3.11+), else found by name."""
    mode = "module" if called is not None and called is failing else None
    cls = type(called).__name__ if called is not None else None

    def calls_module(node: ast.AST) -> bool:
        if called is None or not isinstance(node, ast.Call):
            return False
        func = node.func
        return _lookup(func, frame) is called or (isinstance(func, ast.Call) and _terminal(func.func) == cls)

    def runs_op(node: ast.AST) -> bool:
        if isinstance(node, ast.Call):
            return _terminal(node.func) in names
        if isinstance(node, ast.BinOp):
            return op in _BINOPS.get(type(node.op), ())
        return isinstance(node, ast.Subscript) and op == "__getitem__"

    names = set(_ALIASES.get(op, (op,)))
    exact = _expression_at(site, frame.f_code, lasti) if frame is not None and site is not None else None
    if exact is not None:
        if calls_module(exact):
            return exact, mode
        return exact, "op" if runs_op(exact) else None
    nodes = _candidates(site)
    for node in nodes:
        if calls_module(node):
            return node, mode
    for node in nodes:
        if runs_op(node):
            return node, "op"
    if called is not None:
        calls = [n for n in nodes if isinstance(n, ast.Call)]
        if len(calls) == 1:
            return calls[0], mode
    return None, None


def _slots(node: ast.AST, op: str, frame: Any) -> list[ast.expr]:
    """The argument expressions of a call as the op receives them (the receiver first for a
    method call, the operands of a binary operator, reflected ones swapped)."""
    if isinstance(node, ast.BinOp):
        return [node.right, node.left] if op.startswith("__r") else [node.left, node.right]
    if isinstance(node, ast.Subscript):
        return [node.value]
    if isinstance(node, ast.Call):
        receiver = (
            [node.func.value]
            if isinstance(node.func, ast.Attribute) and not _is_namespace(node.func.value, frame)
            else []
        )
        return [*receiver, *node.args]
    return []


def _is_namespace(expr: ast.expr, frame: Any) -> bool:
    """``torch``, ``F``, ``torch.nn.functional``, ``torch.Tensor``: a module or a class, not a
    tensor receiver."""
    value = _lookup(expr, frame)
    if value is not _MISSING:
        return isinstance(value, types.ModuleType | type)
    while isinstance(expr, ast.Attribute):
        expr = expr.value
    return isinstance(expr, ast.Name) and expr.id in ("torch", "F", "nn", "functional")


def _names(
    node: ast.AST | None,
    mode: str | None,
    tensors: list[tuple[torch.Tensor, Any]],
    frame: Any,
    site: Site | None,
    op: str,
) -> list[str | None]:
    """The source text of each tensor operand: an argument expression whose value is that
    tensor, else the argument at its position: of the op's own call (``mode == "op"``:
    receiver first), or of the call of the layer that raised (``mode == "module"``), unless
    that argument is a name holding another tensor (a layer that reorders its input first)."""
    if node is None or site is None:
        return [None] * len(tensors)
    source = _source_text(site)
    func = getattr(node, "func", None)
    exprs = [e for e in ast.walk(node) if isinstance(e, ast.Name | ast.Attribute) and e is not func]
    values = [(e, _lookup(e, frame)) for e in exprs]
    if mode == "op":
        slots = _slots(node, op, frame)
    elif mode == "module" and isinstance(node, ast.Call):
        slots = list(node.args)
    else:
        slots = []
    out: list[str | None] = []
    for index, (t, pos) in enumerate(tensors):
        name = next((_segment(source, e) for e, v in values if v is t), None)
        if name is None and slots:
            expr, element = None, None
            if mode == "module":
                expr = slots[index] if index < len(slots) else None
            elif isinstance(pos, int) and pos < len(slots):
                expr = slots[pos]
            elif isinstance(pos, tuple) and pos[0] < len(slots):
                expr, element = slots[pos[0]], pos[1]
            elif isinstance(pos, str) and isinstance(node, ast.Call):
                expr = next((k.value for k in node.keywords if k.arg == pos), None)
            if element is not None and isinstance(expr, ast.List | ast.Tuple):
                expr, element = (expr.elts[element], None) if element < len(expr.elts) else (None, None)
            value = _lookup(expr, frame) if expr is not None else _MISSING
            if element is not None and isinstance(value, list | tuple):
                value = value[element] if element < len(value) else _MISSING  # feats[1] of torch.stack(feats)
            if expr is not None and (value is _MISSING or value is t):
                text = _segment(source, expr)
                name = f"{text}[{element}]" if text and element is not None else text
        out.append(name)
    return out


def _segment(source: str, node: ast.AST, limit: int = 48) -> str | None:
    text = ast.get_source_segment(source, node)
    if not text:
        return None
    text = " ".join(text.split())
    return text if len(text) <= limit else None


def _source(node: ast.AST, site: Site) -> str:
    source = _source_text(site)
    text = ast.get_source_segment(source, node)
    text = " ".join((text or "").split())
    if len(text) <= 72:
        return text
    if isinstance(node, ast.Call):
        head = ast.get_source_segment(source, node.func) or "..."
        return f"{' '.join(head.split())}(...)"
    return text[:69] + "..."


def _constructor_text(site: Site, cls: str, extra: str) -> str | None:
    """``nn.Conv2d(10, 20, 5)``: the constructor call as written at ``site``, when its
    arguments are literals (``nn.Linear(d_in, d_out)`` says less than the sizes), and, of
    several calls of the class on the line (``nn.Sequential(nn.Linear(10, 32), ...,
    nn.Linear(32, 3))``), the one whose numbers lead the module's ``extra_repr``."""
    statement = statement_at(site)
    if statement is None:
        return None
    source = _source_text(site)
    calls = [
        node
        for node in ast.walk(statement)
        if isinstance(node, ast.Call)
        and _terminal(node.func) == cls
        and node.lineno <= site.line <= (node.end_lineno or 0)
    ]
    if len(calls) > 1:
        numbers = [int(n) for n in re.findall(r"-?\d+", extra)]
        calls = [c for c in calls if _leads(_positional_numbers(c), numbers)]
    if len(calls) != 1:
        return None
    node = calls[0]
    if not all(_literal(a) for a in (*node.args, *(k.value for k in node.keywords))):
        return None
    text = " ".join((ast.get_source_segment(source, node) or "").split())
    if text and len(text) <= 72:
        return text
    head = ast.get_source_segment(source, node.func)
    return f"{head}(...)" if head else None


def _positional_numbers(call: ast.Call) -> list[int] | None:
    """The integers of a call's positional arguments (tuples flattened), None if any is not a literal."""
    out: list[int] = []
    for a in call.args:
        try:
            value = ast.literal_eval(a)
        except ValueError:
            return None
        for v in value if isinstance(value, tuple | list) else (value,):
            if not isinstance(v, int):
                return None
            out.append(int(v))
    return out


def _leads(numbers: list[int] | None, reference: list[int]) -> bool:
    return numbers is not None and reference[: len(numbers)] == numbers


def _literal(expr: ast.expr) -> bool:
    """A number, a string, or arithmetic and tuples of them (``16 * 8 * 8``, ``(3, 3)``)."""
    allowed = (ast.Constant, ast.BinOp, ast.UnaryOp, ast.Tuple, ast.List, ast.operator, ast.unaryop, ast.expr_context)
    return all(isinstance(n, allowed) for n in ast.walk(expr))


def _expression_at(site: Site | None, code: Any, lasti: int) -> ast.AST | None:
    """The call, operator or subscript that the instruction at ``lasti`` of ``code`` runs (the
    span a traceback underlines), on the line of ``site``."""
    if site is None or lasti < 0 or not hasattr(code, "co_positions"):
        return None
    positions = list(code.co_positions())
    if lasti // 2 >= len(positions):
        return None
    line, end_line, col, end_col = positions[lasti // 2]
    if line is None or col is None:
        return None
    for node in _candidates(site):
        if (node.lineno, node.col_offset, node.end_lineno, node.end_col_offset) == (line, col, end_line, end_col):
            return node
    return None


def _op_of(node: ast.AST) -> str:
    if isinstance(node, ast.Call):
        return _terminal(node.func) or "call"
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)][0]
    if isinstance(node, ast.Subscript):
        return "__getitem__"
    return "operation"


def _op_on_line(site: Site) -> str:
    """For an error that no recorded op reported (raised after the watched steps): the name of
    the innermost call or operator on the line."""
    for node in _candidates(site):
        if isinstance(node, ast.Call):
            name = _terminal(node.func)
            if name:
                return name
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)][0]
        if isinstance(node, ast.Subscript):
            return "__getitem__"
    return "operation"


def _tensors_of_node(node: ast.AST | None, frame: Any) -> list[tuple[torch.Tensor, Any]]:
    """The tensor arguments of the expression that raised, read from the frame by name."""
    if node is None:
        return []
    out: list[tuple[torch.Tensor, Any]] = []
    for i, expr in enumerate(_slots(node, "", frame)):
        elements = expr.elts if isinstance(expr, ast.List | ast.Tuple) else [expr]
        for j, e in enumerate(elements):
            value = _lookup(e, frame)
            if isinstance(value, torch.Tensor) and all(value is not t for t, _ in out):
                out.append((value, (i, j) if isinstance(expr, ast.List | ast.Tuple) else i))
    return out
