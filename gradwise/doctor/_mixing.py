"""The batch-mixing probe: does sample j's input reach sample i's output inside a model?

One forward of the model on a copy of its input, with forward-mode AD: the batch input is
made a dual tensor whose tangent is non-zero on one sample only (``j0``, in the middle of
the batch), under ``torch.no_grad()`` (no graph, no ``.grad``). A TorchFunctionMode looks
at the tangent of every operation's output: while the samples stay apart, its support (the
elements where the tangent is not zero) is confined to one index along the batch axis (or,
after a flatten, to one block or one stride of a merged axis; or a row and a column of a
pairwise ``(B, B)`` matrix). An operation whose output is not confined while none of its
inputs was mixed is a *mixing operation*; a mixed tensor carries the set of mixing
operations it came from (its taint). At the end, the model's outputs say whether sample
``j0`` reached other samples at all, and the taint of the mixed outputs names the
operations responsible, each with a class (:class:`MixEvent`): a reshape that moves
samples across the batch axis, a softmax or normalisation over it, a sequence operation
(RNN, attention) that runs along it, a batch statistic, or something else.

Integer inputs (token ids) get their tangent at the first operation that turns them into
floats (``nn.Embedding``, ``weight[ids]``, ``one_hot(...).float()``): the elements that
came from sample ``j0`` are followed through view, copy and elementwise operations.

The model is left as it was: BatchNorm/InstanceNorm layers that track running statistics
and Dropout layers are switched to eval by assigning ``training`` (``nn.Module.train`` is
the doctor's to watch) and switched back; the RNG states (torch CPU and CUDA, Python,
NumPy) are saved and restored; buffers whose value the forward changed are copied back,
and attributes the forward set on its modules are put back. Models with user hooks (which
might record the probe's forward) and BatchNorm without running statistics (which mixes
samples on purpose) are not probed. An operation without forward-AD support ends the probe
quietly (:class:`ProbeUnsupported`).
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakTensorKeyDictionary

from gradwise._frames import is_library
from gradwise._graph import unwrap_module
from gradwise._losses import op_names
from gradwise.doctor._trace import Site, locate

__all__ = [
    "MixEvent",
    "ProbeFault",
    "ProbeResult",
    "ProbeUnsupported",
    "batch_input",
    "call_kwargs",
    "probe",
    "sequence_first_modules",
    "unprobeable",
    "unwrap",
]

_MAX_BUFFER_BYTES = 64 * 2**20  # buffers are copied before the probe, to be put back if the forward changed them

# operation classes
RESHAPE = "reshape"  # a view/reshape that moves samples across the batch axis
SOFTMAX = "softmax"  # softmax / log_softmax / normalize over the batch axis
NORMALISE = "normalise"  # x / x.sum(batch axis), x - x.logsumexp(batch axis)
SEQUENCE = "sequence"  # an RNN or attention that runs along the batch axis
REDUCE = "reduce"  # a sum / norm / logsumexp over the batch axis (a NORMALISE when divided into a sample)
STATISTIC = "statistic"  # a batch mean / std / max: on purpose (hand-written BatchNorm, minibatch std)
OTHER = "other"

_RESHAPES = frozenset({"view", "reshape", "view_as", "reshape_as", "flatten", "unflatten", "ravel"})
_SOFTMAXES = frozenset({"softmax", "log_softmax", "softmin", "_softmax", "_log_softmax", "gumbel_softmax"})
_REDUCES = frozenset({"sum", "nansum", "norm", "linalg_vector_norm", "logsumexp"})
_STATISTICS = frozenset(
    {"mean", "nanmean", "std", "var", "std_mean", "var_mean", "amax", "amin", "max", "min", "median"}
    | {"nanmedian", "quantile", "nanquantile", "aminmax", "prod"}
)
_RNNS = frozenset({"lstm", "gru", "rnn_tanh", "rnn_relu"})
_DUNDER_INPLACE = frozenset({"__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ipow__"})
_DIVISIONS = frozenset({"div", "true_divide", "divide", "__truediv__", "div_", "__itruediv__"})
_SUBTRACTIONS = frozenset({"sub", "subtract", "__sub__", "sub_", "__isub__"})
_METADATA = frozenset(
    {"size", "dim", "numel", "stride", "is_floating_point", "is_complex", "is_contiguous", "data_ptr"}
    | {"element_size", "__len__", "get_device", "storage_offset", "__format__", "__repr__", "nelement"}
    | {"__hash__", "untyped_storage", "is_set_to", "__reduce_ex__", "__deepcopy__", "_is_view", "__bool__"}
    | {"item", "tolist", "numpy", "__index__", "__int__", "__float__", "shape", "dtype", "device", "ndim"}
    | {"requires_grad", "is_leaf", "grad_fn", "grad", "names", "layout", "is_cuda", "is_sparse", "_version"}
)
# operations on token ids that keep each element where it was or move it around (the
# elements from sample j0 are followed by running the same operation on their mask)
_ID_LAYOUT = frozenset(
    {"view", "reshape", "transpose", "permute", "t", "T", "mT", "contiguous", "clone", "__getitem__", "unsqueeze"}
    | {"squeeze", "flatten", "unflatten", "expand", "expand_as", "flip", "narrow", "select", "movedim", "swapaxes"}
    | {"view_as", "reshape_as", "roll", "repeat", "detach", "to", "cpu", "cuda", "long", "int", "split", "chunk"}
    | {"unbind", "tensor_split", "cat", "concat", "stack", "pad", "moveaxis", "swapdims"}
)
_PROPERTIES = frozenset({"T", "mT", "H", "mH", "data", "real", "imag"})  # getters that compute a tensor
# linear operations without a forward-mode formula, probed as the same operation on the
# primal and on the tangent (packing a padded batch for an RNN and unpacking it)
_LINEAR_LAYOUT = frozenset({"_pack_padded_sequence", "_pad_packed_sequence"})
# deterministic operations without a forward-mode formula whose tangent's support a central
# difference finds exactly (the rows it leaves alone come out bit-identical)
_FINITE_DIFFERENCE = frozenset({"cdist"})
_ZERO, _CONFINED, _PAIRWISE, _MIXED = range(4)


class ProbeUnsupported(Exception):
    """The probe cannot run on this model or input (an operation without forward-AD support,
    an odd input); not a fault of the doctor."""


class ProbeFault(Exception):
    """A fault of the probe itself (to be counted by the doctor)."""


@dataclass(frozen=True)
class _State:
    kind: int
    axis: int = -1  # the batch axis (CONFINED)
    stride: int = 1  # the batch's stride inside that axis, when it was merged with others
    taint: frozenset = frozenset()  # MIXED: the indices of the mixing operations it comes from


_ZERO_STATE = _State(_ZERO)


@dataclass
class MixEvent:
    """An operation that mixed samples: its output is not confined to one sample while none
    of its inputs was mixed.

    Attributes:
        index: its position among the mixing operations of the probe.
        op: the operation's short name (``view``, ``softmax``, ``lstm``).
        cls: what kind of mixing (``reshape``, ``softmax``, ``normalise``, ``sequence``,
            ``reduce``, ``statistic``, ``other``).
        site: the user line it ran from.
        in_shape: the shape of its input that carried the sample.
        out_shape: the shape of its output.
        axis: the batch axis of that input.
        dim: the dimension it normalised or reduced over, or the sequence axis it ran along.
        module: the torch module that ran it (``LSTM``, ``MultiheadAttention``), if any; and
            ``outer``: the outermost torch module below the user's code (``TransformerEncoder``).
        batch_first: the ``batch_first`` of that module, if it has one.
        reportable: whether this is the kind of mixing that is a mistake (a ``reduce`` becomes
            one when its result divides a sample: a hand-written normalisation over the batch).
    """

    index: int
    op: str
    cls: str
    site: Site | None
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    axis: int
    dim: int | None = None
    module: str | None = None
    outer: str | None = None
    batch_first: bool | None = None
    reportable: bool = False
    layer: nn.Module | None = None  # the innermost torch module that ran it
    params: list = field(default_factory=list)  # the parameters of the outermost one


@dataclass
class ProbeResult:
    """What one probe found.

    Attributes:
        batch: the batch size (the size of the probed input's dim 0).
        sample: the sample whose input was perturbed.
        input_shape: the shape of the probed input.
        mixed: whether sample ``sample`` reached other samples of the model's output.
        reached: how many other samples of the output it reached.
        output_shape: the shape of the (first) mixed output.
        events: the mixing operations, in execution order.
        culprits: the reportable mixing operations the mixed outputs come from, in order.
        ops: how many operations the probe looked at.
    """

    batch: int
    sample: int
    input_shape: tuple[int, ...]
    mixed: bool = False
    reached: int = 0
    output_shape: tuple[int, ...] | None = None
    events: list[MixEvent] = field(default_factory=list)
    culprits: list[MixEvent] = field(default_factory=list)
    ops: int = 0


# --- the model and its input ------------------------------------------------------------------


unwrap = unwrap_module


_ALLOWED_HOOKS = ("WeightNorm", "SpectralNorm", "SpectralNormLoadStateDictPreHook", "SpectralNormStateDictHook")


def unprobeable(model: nn.Module) -> str | None:
    """Why ``model`` is not probed, or None: no parameters (a loss, a parameter-free
    module), a loss module, BatchNorm without running statistics (it mixes the samples of a
    batch on purpose), or hooks of the user's on its modules (they would see the probe)."""
    if isinstance(model, nn.modules.loss._Loss):
        return "a loss module"
    if next(model.parameters(), None) is None:
        return "no parameters"
    if any(isinstance(m, nn.modules.lazy.LazyModuleMixin) and m.has_uninitialized_params() for m in model.modules()):
        return "lazy modules not yet initialised"
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.track_running_stats:
            return "BatchNorm without running statistics normalises with the batch's statistics"
        for hooks in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks):
            if any(type(h).__name__ not in _ALLOWED_HOOKS for h in hooks.values()):
                return "hooks on its modules"
    return None


def sequence_first_modules(model: nn.Module) -> list[str]:
    """The sequence-first modules of ``model`` (``nn.LSTM``/``GRU``/``RNN`` and
    ``nn.MultiheadAttention`` with ``batch_first=False``): with them, the model's input may
    legitimately hold the sequence along dim 0."""
    found = []
    for name, m in model.named_modules():
        if isinstance(m, nn.RNNBase | nn.MultiheadAttention) and not getattr(m, "batch_first", False):
            found.append(name or type(m).__name__)
    return found


def call_kwargs(module: nn.Module) -> dict | None:
    """The keyword arguments of the module call now running its forward pre-hooks (a global
    forward pre-hook receives only the positional ones), read from torch's ``_call_impl``
    frame; None when it cannot be found."""
    frame = sys._getframe(1)
    for _ in range(32):
        if frame is None:
            return None
        if frame.f_code.co_name in ("inner", "_call_impl") and is_library(frame.f_code.co_filename):
            local = frame.f_locals
            if local.get("self") is module and isinstance(local.get("kwargs"), dict):
                return dict(local["kwargs"])
        frame = frame.f_back
    return None


def batch_input(args: tuple, kwargs: dict) -> tuple[str, Any, torch.Tensor] | None:
    """The input to probe: the first tensor among the positional (then keyword) arguments
    with at least 2 dimensions and at least 2 rows, floating point or integer (token ids);
    as ``("arg", index, tensor)`` or ``("kwarg", name, tensor)``."""
    candidates = [("arg", i, a) for i, a in enumerate(args)] + [("kwarg", k, v) for k, v in kwargs.items()]
    for where, key, t in candidates:
        if not isinstance(t, torch.Tensor) or t.is_complex() or t.dtype == torch.bool:
            continue
        if t.dim() >= 2 and t.shape[0] >= 2 and t.numel() > 0 and not t.is_sparse and not t.is_nested:
            if fwAD.unpack_dual(t).tangent is not None:
                return None  # already a dual tensor: the user's own forward-AD
            return where, key, t
    return None


# --- the state of the world, saved and put back ----------------------------------------------------


@contextlib.contextmanager
def _untouched(model: nn.Module) -> Iterator[None]:
    """Run the probe with normalisation layers and Dropout in eval, and put back everything
    the forward may change: the training flags, the RNG states, buffers, module attributes."""
    modules = list(model.modules())
    flags = [(m, m.training) for m in modules]
    buffers = [(m, name, b) for m in modules for name, b in m._buffers.items() if b is not None]
    if sum(b.numel() * b.element_size() for _, _, b in buffers) > _MAX_BUFFER_BYTES:
        raise ProbeUnsupported("buffers too large to keep a copy of")
    with torch.no_grad():
        saved = [(b, b._version, b.clone()) for _, _, b in buffers]
    attributes = [(m, dict(vars(m))) for m in modules]
    # lists and dicts the forward may append to (attention maps kept for plotting)
    containers = [
        (v, list(v) if type(v) is list else dict(v))
        for m in modules
        for k, v in vars(m).items()
        if type(v) in (list, dict) and k not in _TORCH_TABLES
    ]
    tables = [(m, *(dict(t) for t in _tables(m))) for m in modules]
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    py_rng = random.getstate()
    numpy = sys.modules.get("numpy")
    np_rng = numpy.random.get_state() if numpy is not None else None
    try:
        for m in modules:
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
                m.training = False  # BatchNorm*, SyncBatchNorm, InstanceNorm with running statistics
            elif isinstance(m, nn.modules.dropout._DropoutNd):
                m.training = False
        yield
    finally:
        steps = [
            lambda: [setattr(m, "training", flag) for m, flag in flags],
            lambda: [_put_back(vars(m), before, drop_new=True) for m, before in attributes],
            lambda: [_put_back(container, before) for container, before in containers],
            lambda: [_put_back(t, b) for m, *befores in tables for t, b in zip(_tables(m), befores, strict=True)],
            lambda: _copy_back(saved),
            lambda: torch.set_rng_state(rng),
            lambda: cuda_rng is not None and torch.cuda.set_rng_state_all(cuda_rng),
            lambda: random.setstate(py_rng),
            lambda: np_rng is not None and numpy.random.set_state(np_rng),
        ]
        error = None
        for step in steps:  # every one runs, also after one fails
            try:
                step()
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise ProbeFault(f"putting the model back: {type(error).__name__}: {error}") from error


def _tables(m: nn.Module) -> tuple[dict, dict, dict]:
    return m._buffers, m._parameters, m._modules


def _put_back(container: Any, before: Any, drop_new: bool = False) -> None:
    """Restore a list or a dict to its shallow copy ``before`` if the forward changed it (for
    a module's ``__dict__``, value by value)."""
    if type(container) is list:
        if len(container) != len(before) or any(a is not b for a, b in zip(container, before, strict=False)):
            container[:] = before
        return
    if drop_new or container.keys() == before.keys():
        for key in [k for k in container if k not in before]:
            del container[key]
        for key, value in before.items():
            if container.get(key, _MISSING) is not value:
                container[key] = value
        return
    container.clear()
    container.update(before)


def _copy_back(saved: list) -> None:
    """Copy back the buffers whose value the forward changed."""
    with torch.no_grad():
        for b, version, copy in saved:
            if b._version != version:
                b.copy_(copy)


_MISSING = object()
_TORCH_TABLES = frozenset({"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"})


@contextlib.contextmanager
def _forward_ad_backends(model: nn.Module) -> Iterator[None]:
    """Kernels with forward-AD support: the math attention kernel, and for recurrent layers
    the native ones (cuDNN's and oneDNN's RNN kernels have none); no autocast; warnings of
    torch's own (the one-off loading of the forward-AD decompositions) are not the user's."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    rnn = any(isinstance(m, nn.RNNBase) for m in model.modules())
    cudnn = torch._C._get_cudnn_enabled()
    mkldnn = torch._C._get_mkldnn_enabled()
    try:
        if rnn:
            torch._C._set_cudnn_enabled(False)
            torch._C._set_mkldnn_enabled(False)
        with contextlib.ExitStack() as stack:
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")
            stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
            for device in ("cpu", "cuda"):  # autocast's casts do not mix with forward AD (float32 tangents)
                if torch.is_autocast_enabled(device):
                    stack.enter_context(torch.autocast(device, enabled=False))
            yield
    finally:
        torch._C._set_cudnn_enabled(cudnn)
        torch._C._set_mkldnn_enabled(mkldnn)


# --- the probe ------------------------------------------------------------------------------------


def probe(model: nn.Module, args: tuple, kwargs: dict, where: tuple[str, Any]) -> ProbeResult:
    """Run ``model`` once on a copy of ``args``/``kwargs`` with a tangent on one sample of the
    input at ``where`` (see :func:`batch_input`) and report how the samples mixed.

    Raises:
        ProbeUnsupported: the model or an operation in it cannot be probed.
        ProbeFault: the probe's own analysis failed.
    """
    kind, key = where
    x = args[key] if kind == "arg" else kwargs[key]
    batch = int(x.shape[0])
    sample = batch // 2
    with torch.no_grad():
        copies = [_copy(a) for a in args]
        kw_copies = {k: _copy(v) for k, v in kwargs.items()}
        primal = x.detach().clone()
    result = ProbeResult(batch, sample, tuple(x.shape))
    mode = _SupportMode(batch, sample, result)
    with _untouched(model), _forward_ad_backends(model), torch.no_grad(), fwAD.dual_level():
        if primal.is_floating_point():
            tangent = torch.zeros_like(primal)
            tangent[sample] = _noise(primal[sample].shape, primal.dtype, primal.device)
            dual = fwAD.make_dual(primal, tangent)
            mode.seed(dual)
        else:
            dual = primal
            mask = torch.zeros(primal.shape, dtype=torch.bool, device=primal.device)
            mask[sample] = True
            mode.ids[dual] = mask
            mode.seed(dual)
        if kind == "arg":
            copies[key] = dual
        else:
            kw_copies[key] = dual
        try:
            with mode:
                out = model(*copies, **kw_copies)
        except ProbeFault:
            raise
        except Exception as exc:
            if mode.fault is not None:
                raise ProbeFault(str(mode.fault)) from mode.fault
            raise ProbeUnsupported(f"{type(exc).__name__}: {exc}") from exc
        if mode.fault is not None:
            raise ProbeFault(f"{type(mode.fault).__name__}: {mode.fault}") from mode.fault
        if mode.unsupported is not None:
            raise mode.unsupported
        try:
            mode.conclude(out)
        except Exception as exc:
            raise ProbeFault(f"{type(exc).__name__}: {exc}") from exc
    return result


def _linear_fallback(op: str, func, args: tuple, kwargs: dict) -> Any:
    """``func`` (linear in its floating-point inputs) on the primals and on the tangents, its
    floating-point outputs made dual tensors from the two."""

    def part(value: Any, tangent: bool) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        primal, dual = fwAD.unpack_dual(value)
        if not tangent:
            return primal
        if dual is not None:
            return dual
        return torch.zeros_like(value) if value.is_floating_point() else value

    primals = func(*(part(a, False) for a in args), **{k: part(v, False) for k, v in kwargs.items()})
    tangent_args = [part(a, True) for a in args]
    if op == "_pad_packed_sequence" and len(tangent_args) > 3:
        tangent_args[3] = 0.0  # the padding value is a constant
    tangents = func(*tangent_args, **{k: part(v, True) for k, v in kwargs.items()})
    if isinstance(primals, torch.Tensor):
        return fwAD.make_dual(primals, tangents) if primals.is_floating_point() else primals
    return type(primals)(
        fwAD.make_dual(p, t) if isinstance(p, torch.Tensor) and p.is_floating_point() else p
        for p, t in zip(primals, tangents, strict=True)
    )


def _finite_difference(func, args: tuple, kwargs: dict) -> Any:
    """``func`` on the primals, as a dual tensor whose tangent is the central difference of
    ``func`` along the inputs' tangents (its support is what matters here, not its value)."""
    primals, tangents = [], []
    for a in args:
        p, t = fwAD.unpack_dual(a) if isinstance(a, torch.Tensor) else (a, None)
        primals.append(p)
        tangents.append(t)
    out = func(*primals, **kwargs)
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        return out
    shifted = []
    for sign in (1.0, -1.0):
        moved = []
        for p, t in zip(primals, tangents, strict=True):
            if t is None:
                moved.append(p)
            else:
                step = 1e-3 * (1.0 + float(p.abs().max())) / max(float(t.abs().max()), 1e-30)
                moved.append(p + sign * step * t)
        shifted.append(func(*moved, **kwargs))
    return fwAD.make_dual(out, (shifted[0] - shifted[1]) / 2)


def _copy(value: Any, depth: int = 0) -> Any:
    """A copy of the tensors in an argument (the forward may change its inputs in place)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if depth >= 2:
        return value
    if type(value) in (list, tuple):
        return type(value)(_copy(v, depth + 1) for v in value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple (PackedSequence)
        return type(value)(*(_copy(v, depth + 1) for v in value))
    if type(value) is dict:
        return {k: _copy(v, depth + 1) for k, v in value.items()}
    return value


def _noise(shape, dtype, device) -> torch.Tensor:
    """Tangent values: from a generator of its own (the global RNG is the user's), all of
    them away from 0, not all equal (a constant tangent vanishes through a LayerNorm)."""
    generator = torch.Generator().manual_seed(12345)
    values = torch.rand(shape, generator=generator, dtype=torch.float32) + 0.5
    return values.to(device=device, dtype=dtype if dtype.is_floating_point else torch.float32)


def _support(tangent: torch.Tensor) -> torch.Tensor:
    """Where a tangent is non-zero; a NaN there comes from a NaN in the primal times a zero
    tangent (``NaN * 0``), not from the sample, and is left out."""
    return tangent.abs() > 0  # NaN > 0 is False


def _tangent(t: torch.Tensor) -> torch.Tensor | None:
    try:
        return fwAD.unpack_dual(t).tangent
    except Exception:
        return None


def _outputs(value: Any, depth: int = 0) -> list[torch.Tensor]:
    """The tensors in a model's output (nested tuples, lists, dicts, dataclass-like objects)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if depth >= 4:
        return []
    if isinstance(value, list | tuple):
        items = list(value)
    elif isinstance(value, dict):
        items = list(value.values())
    elif hasattr(value, "__dataclass_fields__"):
        items = [getattr(value, f, None) for f in value.__dataclass_fields__]
    else:
        return []
    return [t for v in items for t in _outputs(v, depth + 1)]


class _SupportMode(TorchFunctionMode):
    """Follows the tangent's support through every operation (see the module's docstring)."""

    def __init__(self, batch: int, sample: int, result: ProbeResult):
        super().__init__()
        self.batch = batch
        self.sample = sample
        self.result = result
        self.states = WeakTensorKeyDictionary()
        self.ids = WeakTensorKeyDictionary()  # token ids -> where they came from sample j0 (bool mask)
        self.fault: BaseException | None = None  # the analysis failed: a fault of the probe
        self.unsupported: ProbeUnsupported | None = None  # a tensor the analysis cannot read

    def seed(self, t: torch.Tensor) -> None:
        self.states[t] = _State(_CONFINED, 0, 1)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.fault is not None or self.unsupported is not None:
            return func(*args, **kwargs)  # the analysis has ended; the forward runs on
        try:
            name, op = op_names(func)
            if op in _METADATA or (name.endswith(("__get__", "__set__")) and op not in _PROPERTIES):
                return func(*args, **kwargs)
            tracked = self._tracked_ids(args)
        except Exception as exc:
            self.fault = exc
            return func(*args, **kwargs)
        try:
            out = func(*args, **kwargs)
        except NotImplementedError:
            if op in _LINEAR_LAYOUT:
                out = _linear_fallback(op, func, args, kwargs)
            elif op in _FINITE_DIFFERENCE:
                out = _finite_difference(func, args, kwargs)
            else:
                raise
        try:
            if tracked:
                made = self._ids_op(op, func, args, kwargs, out, tracked)
                if made is not None:
                    return made  # a float tensor made from token ids, now a dual tensor
            self._observe(op, args, kwargs, out)
        except ProbeUnsupported as exc:
            self.unsupported = exc
        except Exception as exc:
            self.fault = exc
        return out

    # --- token ids ----------------------------------------------------------------------

    def _tracked_ids(self, args: tuple) -> list[tuple[int, torch.Tensor]] | None:
        if not len(self.ids):
            return None
        found = []
        for i, a in enumerate(args):
            if isinstance(a, torch.Tensor) and a in self.ids:
                found.append((i, a))
            elif isinstance(a, list | tuple):
                found.extend((i, t) for t in a if isinstance(t, torch.Tensor) and t in self.ids)
        return found or None

    def _ids_op(self, op: str, func, args: tuple, kwargs: dict, out: Any, tracked) -> torch.Tensor | None:
        """An operation on token ids that came from the probed input: the ids it makes are
        followed, and a float tensor it makes from them is returned as a dual tensor (None when
        it makes none)."""
        self.result.ops += 1
        position, ids = tracked[0]
        mask = self.ids[ids]
        inputs = [(ids, self.states.get(ids, _ZERO_STATE))]
        if not isinstance(out, torch.Tensor):
            if op in _ID_LAYOUT and position == 0:
                masks = self._replay(func, args, kwargs)
                for o, m in zip(_outputs(out), _outputs(masks), strict=False):
                    if tuple(m.shape) == tuple(o.shape) and not o.is_floating_point():
                        self._mark(o, m != 0, op, args, kwargs, inputs)
            return None
        if op == "embedding" and position == 0:
            return self._mark(out, mask.unsqueeze(-1).expand(out.shape), op, args, kwargs, inputs)
        if op == "__getitem__" and position == 1 and len(args) == 2:  # weight[ids]: a lookup by indexing
            trailing = out.dim() - mask.dim()
            if trailing >= 0 and tuple(out.shape[: mask.dim()]) == tuple(mask.shape):
                lookup = mask.reshape(*mask.shape, *([1] * trailing)).expand(out.shape)
                return self._mark(out, lookup, op, args, kwargs, inputs)
            return None
        if op == "one_hot":
            return self._mark(out, mask.unsqueeze(-1).expand(out.shape), op, args, kwargs, inputs)
        if op in _ID_LAYOUT and position == 0:
            masks = self._replay(func, args, kwargs)
            if isinstance(masks, torch.Tensor) and tuple(masks.shape) == tuple(out.shape):
                return self._mark(out, masks != 0, op, args, kwargs, inputs)
            return None
        if tuple(out.shape) == tuple(mask.shape):
            return self._mark(out, mask, op, args, kwargs, inputs)  # elementwise (a cast, ids + offset, ids != pad)
        return None

    def _replay(self, func, args: tuple, kwargs: dict) -> Any:
        """The same layout operation on the masks of the ids (None where it does not apply)."""
        first: Any
        if isinstance(args[0], list | tuple):
            first = [
                self.ids[t].to(torch.uint8)
                if isinstance(t, torch.Tensor) and t in self.ids
                else torch.zeros(t.shape, dtype=torch.uint8, device=t.device)
                for t in args[0]
            ]
        else:
            first = self.ids[args[0]].to(torch.uint8)
        replay = {k: v for k, v in kwargs.items() if k not in ("dtype", "out")}
        if "value" in replay:
            replay["value"] = 0
        try:
            return func(first, *args[1:], **replay)
        except Exception:
            return None  # the ids are followed no further

    def _mark(self, out: torch.Tensor, mask: torch.Tensor, op: str, args: tuple, kwargs: dict, inputs) -> Any:
        """Follow ids (an integer ``out``) or make a float ``out`` a dual tensor whose tangent
        lies where ``mask`` is set; returns the dual tensor, or None."""
        state = self._classify(mask, op, args, kwargs, out, inputs)
        if not out.is_floating_point():
            self.ids[out] = mask
            self.states[out] = state
            return None
        tangent = _noise(out.shape, out.dtype, out.device) * mask.to(out.dtype)
        primal, carried = fwAD.unpack_dual(out)
        if carried is not None:  # already dual through another input (cat of an embedding and a dual tensor)
            tangent = tangent + carried
        dual = fwAD.make_dual(primal, tangent)
        self.states[dual] = state
        return dual

    # --- the support -----------------------------------------------------------------------

    def _observe(self, op: str, args: tuple, kwargs: dict, out: Any) -> None:
        inputs = [t for t in _flat(args, kwargs) if isinstance(t, torch.Tensor)]
        if not inputs:
            return
        states = [self._input_state(t) for t in inputs]
        if all(s.kind == _ZERO for s in states):
            outs = _outputs(out)
            if not any(_tangent(o) is not None for o in outs):
                return
        self.result.ops += 1
        outs = _outputs(out)
        mutated = args[0] if args and isinstance(args[0], torch.Tensor) and _inplace(op) else None
        if mutated is not None and all(o is not mutated for o in outs):
            outs = [*outs, mutated]
        for o in outs:
            self.states[o] = self._state(o, op, args, kwargs, list(zip(inputs, states, strict=True)))
        if op in _DIVISIONS or op in _SUBTRACTIONS:
            self._hand_normalisation(op, args)

    def _input_state(self, t: torch.Tensor) -> _State:
        state = self.states.get(t)
        if state is not None:
            return state
        if _tangent(t) is None:
            return _ZERO_STATE
        state = self._state(t, "", (), {}, [])  # a dual tensor made elsewhere
        self.states[t] = state
        return state

    def _state(self, o: torch.Tensor, op: str, args: tuple, kwargs: dict, inputs: list) -> _State:
        tangent = _tangent(o)
        if tangent is None or tangent.numel() == 0:
            return _ZERO_STATE
        if tangent.layout != torch.strided or o.is_quantized or o.is_nested or tangent.device.type == "meta":
            raise ProbeUnsupported(f"{op} made a {tangent.layout} tensor")
        return self._classify(_support(tangent), op, args, kwargs, o, inputs)

    def _classify(self, support: torch.Tensor, op: str, args: tuple, kwargs: dict, o: torch.Tensor, inputs) -> _State:
        """The state of an operation's output ``o`` whose sample support is ``support``, given
        its inputs' ``(tensor, state)``."""
        if not bool(support.any()):
            return _ZERO_STATE
        mixed = [s for _, s in inputs if s.kind == _MIXED]
        if mixed:
            undone = self._one_sample_again(support)
            if undone is not None:
                return undone  # the mix was undone (a scrambling view viewed back)
            return _State(_MIXED, taint=frozenset().union(*(s.taint for s in mixed)))
        confined = self._confined(support, op, inputs)
        if confined is not None:
            return confined
        if self._pairwise(support):
            return _State(_PAIRWISE)
        event = self._event(op, args, kwargs, o, inputs)
        return _State(_MIXED, taint=frozenset({event.index}))

    def _one_sample_again(self, support: torch.Tensor) -> _State | None:
        """A tensor made from a mixed one whose support is one index along an axis of the
        batch's size."""
        for axis, n in enumerate(support.shape):
            if n == self.batch:
                others = tuple(d for d in range(support.dim()) if d != axis)
                if int((support.any(dim=others) if others else support).sum()) == 1:
                    return _State(_CONFINED, axis, 1)
        return None

    def _confined(self, support: torch.Tensor, op: str, inputs: list) -> _State | None:
        """The batch axis of a tensor whose support is still one sample's, or None."""
        shape = tuple(support.shape)
        ndim = len(shape)
        batch = self.batch
        projections: dict[int, torch.Tensor] = {}

        def project(axis: int) -> torch.Tensor:
            if axis not in projections:
                others = tuple(d for d in range(ndim) if d != axis)
                projections[axis] = (support.any(dim=others) if others else support).nonzero().flatten()
            return projections[axis]

        def one_sample(axis: int, stride: int) -> bool:
            idx = project(axis)
            return bool(((idx // stride) % batch == (idx[0] // stride) % batch).all())

        candidates: list[tuple[int, int]] = []
        confined_inputs = [(t, s) for t, s in inputs if s.kind == _CONFINED]
        for t, s in confined_inputs:  # where the input had it
            if s.stride <= 0:
                continue
            size = t.shape[s.axis] if s.axis < t.dim() else None
            for axis in (s.axis, ndim - (t.dim() - s.axis)):
                if 0 <= axis < ndim and shape[axis] == size:
                    candidates.append((axis, s.stride))
        candidates += [(a, 1) for a in range(ndim) if shape[a] == batch]
        for axis, stride in candidates:
            if shape[axis] % batch == 0 and one_sample(axis, stride):
                if op in _RESHAPES and self._scrambled(axis, stride, shape, confined_inputs):
                    return None
                return _State(_CONFINED, axis, stride)
        if op in _RESHAPES:
            for t, s in confined_inputs:
                mapped = _reshape_map(tuple(t.shape), s.axis, s.stride, shape, batch)
                if mapped is not None and one_sample(*mapped):
                    if self._scrambled(mapped[0], mapped[1], shape, confined_inputs):
                        return None
                    return _State(_CONFINED, *mapped)
        else:
            # one index along a longer axis (samples concatenated along the batch axis) or a
            # shorter one (a slice of the batch)
            for axis in range(ndim):
                if shape[axis] >= 2 and project(axis).numel() == 1:
                    return _State(_CONFINED, axis, 1)
            # one block of an axis that holds the batch merged with another (the batch folded
            # into the channels for a grouped convolution)
            for axis in range(ndim):
                n = shape[axis]
                if n > batch and n % batch == 0:
                    for stride in (n // batch, 1):
                        if one_sample(axis, stride):
                            return _State(_CONFINED, axis, stride)
        # the batch axis split in two or more (x.view(2, B // 2, ...)): one point in them
        for start in range(ndim):
            size = 1
            for end in range(start, ndim):
                size *= shape[end]
                if size > batch:
                    break
                if size == batch and end > start and all(project(a).numel() == 1 for a in range(start, end + 1)):
                    return _State(_CONFINED, start, -(end - start + 1))
        return None

    def _scrambled(self, axis: int, stride: int, shape: tuple, confined_inputs: list) -> bool:
        """A reshape that keeps the memory order of one sample's elements but leaves it merged
        into an axis while a new axis of the batch's size appears elsewhere: ``x.view(T, B, D)``
        of an ``(B, T, D)`` tensor with ``T`` a multiple of ``B``."""
        batch = self.batch
        if stride == 1 and shape[axis] == batch:
            return False
        for t, s in confined_inputs:
            if s.stride == 1 and t.shape[s.axis] == batch:
                before = sum(1 for a, n in enumerate(t.shape) if n == batch and a != s.axis)
                after = sum(1 for a, n in enumerate(shape) if n == batch and a != axis)
                if after > before:
                    return True
        return False

    def _pairwise(self, support: torch.Tensor) -> bool:
        """A (B, B) matrix of pairs (a similarity matrix): the sample's row and column."""
        axes = [a for a, n in enumerate(support.shape) if n == self.batch]
        for i, a in enumerate(axes):
            for b in axes[i + 1 :]:
                others = tuple(d for d in range(support.dim()) if d not in (a, b))
                pairs = support.any(dim=others) if others else support
                if a > b:
                    pairs = pairs.t()
                for m in (pairs, pairs.t()):
                    row = int(m.sum(1).argmax())
                    rest = m.clone()
                    rest[row] = False
                    if int(rest.any(0).sum()) <= 1:
                        return True
        return False

    def _event(self, op: str, args: tuple, kwargs: dict, out: torch.Tensor, inputs: list) -> MixEvent:
        """Record a mixing operation, with its class."""
        carrier = next(((t, s) for t, s in inputs if s.kind == _CONFINED and s.stride > 0), None)
        site, _ = locate()
        index = len(self.result.events)
        if carrier is None:
            event = MixEvent(index, op, OTHER, site, (), tuple(out.shape), -1)
            self.result.events.append(event)
            return event  # not reported: the module that ran it does not matter
        t, s = carrier
        event = MixEvent(index, op, OTHER, site, tuple(t.shape), tuple(out.shape), s.axis)
        ndim = t.dim()
        if op in _RESHAPES:
            event.cls, event.reportable = RESHAPE, True
        elif op in _SOFTMAXES or op == "normalize":
            dim = _softmax_dim(op, args, kwargs, ndim)
            event.dim = dim
            if dim is not None and dim == s.axis and t is _first_tensor(args, kwargs):
                event.cls, event.reportable = SOFTMAX, True
        elif op in _REDUCES:
            dims = _reduce_dims(op, args, kwargs, ndim)
            if dims == (s.axis,):
                event.cls, event.dim = REDUCE, s.axis
        elif op in _STATISTICS:
            event.cls = STATISTIC
        elif op in _RNNS and t is args[0] and ndim == 3 and len(args) > 8 and isinstance(args[3], bool):
            # _VF.lstm(input, hx, weights, has_biases, layers, dropout, train, bidirectional, batch_first);
            # a packed sequence comes as (data, batch_sizes, hx, weights, ...)
            batch_first = bool(args[8]) if len(args) > 8 else False
            if s.axis == (1 if batch_first else 0):
                event.cls, event.reportable, event.dim = SEQUENCE, True, s.axis
        elif op == "multi_head_attention_forward" and ndim == 3 and any(t is a for a in args[:3]):
            if s.axis == 0:
                event.cls, event.reportable, event.dim = SEQUENCE, True, 0
        elif op == "scaled_dot_product_attention" and ndim >= 3 and any(t is a for a in args[:3]):
            if s.axis == ndim - 2:
                event.cls, event.reportable, event.dim = SEQUENCE, True, s.axis
        inner, outer = _running_modules()
        if inner is not None:
            event.layer, event.module, event.outer = inner, type(inner).__name__, type(outer).__name__
            event.batch_first = getattr(inner, "batch_first", None)
            if event.cls == SEQUENCE:
                event.params = list(outer.parameters())
        self.result.events.append(event)
        return event

    def _hand_normalisation(self, op: str, args: tuple) -> None:
        """``x / x.sum(batch axis)`` (or ``x / x.norm(...)``, ``x - x.logsumexp(...)``): the
        reduction's result divides a sample, a normalisation over the batch."""
        if len(args) < 2 or not all(isinstance(a, torch.Tensor) for a in args[:2]):
            return
        numerator, denominator = (self.states.get(a, _ZERO_STATE) for a in args[:2])
        if numerator.kind != _CONFINED or denominator.kind != _MIXED or len(denominator.taint) != 1:
            return
        event = self.result.events[next(iter(denominator.taint))]
        wanted = ("logsumexp",) if op in _SUBTRACTIONS else ("sum", "nansum", "norm", "linalg_vector_norm")
        if event.cls == REDUCE and event.op in wanted:
            event.cls, event.reportable = NORMALISE, True

    # --- the conclusion ----------------------------------------------------------------------

    def conclude(self, out: Any) -> None:
        """Whether the model's outputs mix samples, and the operations responsible."""
        result = self.result
        taint: set[int] = set()
        for o in _outputs(out):
            if not o.is_floating_point():
                continue
            state = self._input_state(o)
            if state.kind != _MIXED:
                continue
            reached = self._reached(o)
            if reached is None:
                continue  # no axis of the batch's size: a reduction over the batch (a loss), undecided
            if not result.mixed:
                result.mixed, result.reached, result.output_shape = True, reached, tuple(o.shape)
            taint |= state.taint
        if result.mixed:
            result.culprits = [e for e in result.events if e.index in taint and e.reportable]

    def _reached(self, o: torch.Tensor) -> int | None:
        """How many other samples of an output the sample reached, along the first of its first
        two axes that can hold the batch (of its size, or a multiple of it where the batch was
        flattened with other axes, read batch-major); None when neither can hold the batch (a
        reduction over it) or some reading of one still holds one sample only (the benefit of
        the doubt)."""
        support = _support(_tangent(o))
        batch, ndim = self.batch, support.dim()
        reached = None
        for axis in range(min(ndim, 2)):  # batch-first, sequence-first or flattened outputs
            n = support.shape[axis]
            if n % batch:
                continue
            others = tuple(d for d in range(ndim) if d != axis)
            idx = (support.any(dim=others) if others else support).nonzero().flatten()
            for stride in _divisors(n // batch):
                if torch.unique((idx // stride) % batch).numel() <= 1:
                    return None
            if reached is None:
                samples = torch.unique(idx // (n // batch))
                reached = int(samples.numel()) - int(bool((samples == self.sample).any()))
        return reached


def _divisors(k: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(k) + 1) if k % d == 0]
    return sorted({*small, *(k // d for d in small)})


def _reshape_map(in_shape: tuple, axis: int, stride: int, out_shape: tuple, batch: int) -> tuple[int, int] | None:
    """Where a reshape puts the batch: the output axis and the batch's stride inside it, when
    the samples keep their blocks (a flatten of the batch with its neighbours, or an unflatten
    back); None when no axis holds them."""
    if stride <= 0:
        return None
    period = stride * math.prod(in_shape[axis + 1 :])  # the distance between samples in row-major order
    for out_axis in range(len(out_shape)):
        inner = math.prod(out_shape[out_axis + 1 :])
        if inner and period % inner == 0:
            out_stride = period // inner
            if out_shape[out_axis] % (batch * out_stride) == 0:
                return out_axis, out_stride
    return None


def _running_modules() -> tuple[nn.Module | None, nn.Module | None]:
    """The innermost and the outermost torch modules running now, below the user's code."""
    frame = sys._getframe(1)
    inner = outer = None
    while frame is not None and is_library(frame.f_code.co_filename):
        owner = frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and type(owner).__module__.startswith("torch.nn"):
            inner = inner or owner
            outer = owner
        frame = frame.f_back
    return inner, outer


def _flat(args: tuple, kwargs: dict) -> list:
    out = []
    for v in (*args, *kwargs.values()):
        if isinstance(v, list | tuple):
            out.extend(v)
        else:
            out.append(v)
    return out


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    value = kwargs.get("input")
    return value if isinstance(value, torch.Tensor) else None


def _inplace(op: str) -> bool:
    return (op.endswith("_") and not op.startswith("__")) or op in _DUNDER_INPLACE


def _softmax_dim(op: str, args: tuple, kwargs: dict, ndim: int) -> int | None:
    """The dimension a softmax (or ``normalize``) runs over, as torch resolves it."""
    if op == "normalize":
        dim = kwargs.get("dim", args[2] if len(args) > 2 else 1)
    elif op == "gumbel_softmax":
        dim = kwargs.get("dim", args[4] if len(args) > 4 else -1)
    else:
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        if dim is None:
            dim = 0 if ndim in (0, 1, 3) else 1  # the legacy implicit dim of F.softmax
    if not isinstance(dim, int) or isinstance(dim, bool):
        return None
    return dim % ndim if ndim else None


def _reduce_dims(op: str, args: tuple, kwargs: dict, ndim: int) -> tuple[int, ...] | None:
    """The dimensions a reduction runs over (sorted, non-negative), None for all of them."""
    position = 2 if op in ("norm", "linalg_vector_norm") else 1  # norm(input, p, dim), vector_norm(x, ord, dim)
    dim = kwargs.get("dim", args[position] if len(args) > position else None)
    if dim is None and "axis" in kwargs:
        dim = kwargs["axis"]
    if isinstance(dim, int) and not isinstance(dim, bool):
        return (dim % ndim,) if ndim else None
    if isinstance(dim, list | tuple) and all(isinstance(d, int) for d in dim):
        return tuple(sorted({d % ndim for d in dim})) if ndim else None
    return None
