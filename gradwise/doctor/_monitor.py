"""monitor(): gradient health over a long run, at the cost of a few norms per step.

The doctor's :func:`~gradwise.doctor.watch` records every operation of a few steps; a long
run cannot pay that. The monitor installs only:

- a pre- and a post-hook on the optimizers' ``step()`` (global hooks, filtered to the
  optimizers holding the monitored parameters): before the step, the gradient and weight
  norms of its parameters (``torch._foreach_norm``, on the device) and a copy of the weights
  into a buffer kept across steps; after it, the norms of the update (``after - before``);
- a wrapper of ``torch.autograd.backward`` that keeps the loss (a detached reference; the
  loss a ``GradScaler`` scaled, unscaled) and of ``clip_grad_norm_``/``clip_grad_value_``,
  so that the gradient norms are those the backward produced, before clipping;
- a forward hook on each activation module (ReLU family, GELU, SiLU, sigmoid, tanh) that,
  in recorded steps, reduces its output to the units that were <= 0 for every sample of
  the batch (dead) and the fraction of outputs in a sigmoid's or tanh's flat tails
  (saturated).

Everything a recorded step measured is read with **one** transfer to the host, after the
optimizer's step; steps in between (``every``) cost one Python call per hook. The figures
go to ``history``, to a JSONL log, to TensorBoard, and to the alerts
(:mod:`gradwise.doctor._alerts`), which raise the doctor's own kinds of findings
(``non-finite``, ``exploding-gradient``, ``vanishing-gradient``, ``dead-units``) with the
step where they appeared. When a value turns non-finite, the doctor's recorder is armed
for the next steps (:class:`~gradwise.doctor.Doctor`, numerics included) to name the
operation and the line, as ``gradwise doctor`` does.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import os
import sys
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradwise._graph import unwrap_module
from gradwise._hooks import Instrumentation
from gradwise.doctor._findings import Finding
from gradwise.doctor._stats import _norms, read, total_norm
from gradwise.doctor._trace import user_site
from gradwise.errors import ArgumentError, ArgumentTypeError

__all__ = ["GradientAlert", "GradientMonitor", "monitor", "read_jsonl"]

# activation modules and what is measured on their output
DEAD = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
)
CAN_DIE = (nn.ReLU, nn.ReLU6)  # a unit <= 0 for every input passes no gradient at all
SATURATING = (nn.Sigmoid, nn.Tanh)
TAIL = 0.99  # tanh |y| > 0.99 (derivative < 0.02), sigmoid y < 0.01 or y > 0.99 (< 0.0099)
_KEEP = 10_000  # records kept in ``history``: the first tenth and the latest (the log has all)


class GradientAlert(BaseException):
    """Raised by a monitor with ``alerts="raise"`` at the first alert, from the optimizer
    step that recorded it (a ``BaseException``, like ``KeyboardInterrupt``, so that a
    training loop's ``except Exception:`` does not swallow it). ``finding`` is the alert."""

    def __init__(self, finding: Finding, monitor: GradientMonitor | None = None):
        where = f" ({finding.file}:{finding.line})" if finding.file else ""
        super().__init__(f"gradwise monitor: {finding.kind} at step {finding.step}{where}: {finding.message}")
        self.finding = finding
        self.monitor = monitor


@dataclass(eq=False)
class _Optimizer:
    """An optimizer stepping monitored parameters."""

    ref: weakref.ref
    name: str
    params: list[tuple[str, torch.Tensor]]  # the monitored parameters in its groups, in model order
    signature: tuple  # the sizes of its groups when ``params`` was built
    buffer: list[torch.Tensor] = field(default_factory=list)  # the weights before the step


@dataclass(eq=False)
class _Pending:
    """A recorded step between the optimizer's pre- and post-hook."""

    step: int
    optimizer: _Optimizer
    names: list[str]  # of the parameters with a gradient
    tensors: list[torch.Tensor]
    grad_norms: torch.Tensor | None = None  # [n], on the device
    weight_norms: torch.Tensor | None = None
    without_grad: list[str] = field(default_factory=list)
    copied: bool = False
    sharded: list[bool] | None = None  # per parameter, whether it is a sharded DTensor (FSDP2); None: none is
    finite: bool = False  # the gradients are known to be finite (read on a CPU; on a GPU it is not known yet)


@dataclass(eq=False)
class _Activation:
    """What one recorded step saw of an activation module's calls."""

    name: str
    module: Any  # weak reference
    dead: torch.Tensor | None = None  # bool [units]: <= 0 for every sample (the OR over the step's calls)
    tails: torch.Tensor | None = None  # float [2]: saturated outputs, outputs
    window: deque = field(default_factory=lambda: deque(maxlen=_WINDOW))  # dead masks of the last records

    def dead_over_window(self) -> tuple[float, int]:
        """The fraction of units <= 0 for every sample of the last records' batches, and the
        units (read only when this record's own fraction could reach the alert's threshold:
        a unit dead over the window is dead in this record)."""
        masks = list(self.window)
        dead = masks[-1]
        for mask in masks[:-1]:
            if mask.shape == dead.shape:
                dead = dead & mask
        return float(dead.float().mean()), dead.numel()


@dataclass(eq=False)
class ModelCall:
    """A call of a monitored model in a recorded step (references to its inputs, not copies)."""

    module: weakref.ref
    args: tuple
    kwargs: dict
    rng: torch.Tensor
    cuda_rng: list | None
    site: Any  # the user's line that called it


_CALLS = 4  # model calls kept per recorded step (a GAN's discriminator runs on real and on fake data)
_WINDOW = 5  # recorded steps over which the dead-units alert judges a unit (a unit alive once is alive)


def _floating_tensor(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point()


class GradientMonitor:
    """Gradient health of a long run: per-parameter norms, update ratios, dead and saturated
    units, the loss, and alerts, recorded every ``every`` optimizer steps.

    Use :func:`monitor` (a context manager), or ``attach()``/``detach()`` where a ``with``
    block does not fit (a callback, a notebook). See the module docstring for what it hooks.

    Args:
        model: the model (an ``nn.Module``; a DDP or ``torch.compile`` wrapper is looked
            through), several (a list, or a dict name -> module: parameter names are then
            prefixed by the name or index), or None: the models are then found at each new
            optimizer's first step, among the modules the calling frames hold.
        optimizer: the optimizer(s) to monitor (one, or a list); None: every optimizer that
            steps a monitored parameter.
        every: record one optimizer step in ``every`` (steps 1, 1 + every, 1 + 2 every, ...).
        jsonl: a path: one JSON object per recorded step is appended (the file is created
            or truncated when the monitor attaches). Non-finite values are written as
            ``NaN``/``Infinity`` (as Python's ``json`` reads them).
        tensorboard: a ``torch.utils.tensorboard.SummaryWriter`` (or a log directory, for
            which one is made): scalars ``gradwise/grad_norm/<param>``,
            ``gradwise/update_ratio/<param>``, ``gradwise/nonfinite/<param>``,
            ``gradwise/dead_fraction/<module>``, ``gradwise/saturated_fraction/<module>``,
            ``gradwise/grad_norm_total``, ``gradwise/loss``; findings as text.
        alerts: True (findings in ``findings`` and the outputs), False (figures only), or
            ``"raise"``: also raise :class:`GradientAlert` at the first one.

    Attributes:
        history: the recorded steps (dicts, as in the JSONL log), at most the first 1,000
            and the latest 9,000.
        findings: the alerts (:class:`~gradwise.doctor.Finding`, with ``step`` set).
        steps: optimizer steps seen. internal_errors: the monitor's own faults (never
            raised into the user's program).

    Under DistributedDataParallel the gradients at the step are the synchronised ones
    (every rank records the same norms); only rank 0 writes the JSONL log and TensorBoard.
    """

    def __init__(
        self,
        model: nn.Module | Sequence[nn.Module] | Mapping[str, nn.Module] | None = None,
        optimizer: Any = None,
        *,
        every: int = 1,
        jsonl: str | os.PathLike | None = None,
        tensorboard: Any = None,
        alerts: bool | str = True,
        _capture_at_step: bool = True,
    ):
        self._models = _models(model)
        self._optimizers_given = _optimizer_list(optimizer)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ArgumentError(f"monitor: every must be a positive integer (got {every!r})")
        if alerts not in (True, False, "raise"):
            raise ArgumentError(f"monitor: alerts must be True, False or 'raise' (got {alerts!r})")
        if jsonl is not None and not isinstance(jsonl, str | os.PathLike):
            raise ArgumentTypeError(f"monitor: jsonl must be a path or None (got {type(jsonl).__name__})")
        if tensorboard is not None and not isinstance(tensorboard, str | os.PathLike):
            if not callable(getattr(tensorboard, "add_scalar", None)):
                raise ArgumentTypeError(
                    "monitor: tensorboard must be a torch.utils.tensorboard.SummaryWriter, a log directory or None "
                    f"(got {type(tensorboard).__name__})"
                )
        self.every = every
        self.alerts = alerts
        self._jsonl_path = None if jsonl is None else os.fspath(jsonl)
        self._tensorboard = tensorboard
        self._capture_at_step = _capture_at_step  # False: an integration captures (Lightning's hook)
        self.history: list[dict] = []
        self._latest: deque[dict] = deque(maxlen=_KEEP - _KEEP // 10)
        self.findings: list[Finding] = []
        self.steps = 0
        self.on_record: Callable[[dict], None] | None = None
        self._faults: dict[str, int] = {}
        self._inst: Instrumentation | None = None
        # id -> parameter, weakly (the models of finished k-fold folds are freed; ``_mine`` checks identity)
        self._known: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._names: dict[int, str] = {}
        self._order: dict[int, int] = {}
        self._name_order: dict[str, int] = {}
        self.ndim: dict[str, int] = {}  # parameter name -> its number of dimensions
        self.embeddings: set[str] = set()  # names of embedding tables (their gradients are sparse by nature)
        self._current: int | None = None  # the step whose closure is running
        self._activations: dict[int, list[_Activation]] = {}  # id(module) -> one per call in a step
        self._calls: dict[int, int] = {}  # id(module) -> calls in the current recorded step
        self._optimizers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # optimizer -> _Optimizer | None
        self._pending: dict[int, _Pending] = {}
        self._losses: list[torch.Tensor] = []
        self._late: list[Finding] = []
        self._held: list[dict] = []  # records not yet in the log: a non-finite value's line is being looked for
        self._roots: list[weakref.ref] = []
        self.model_calls: list[ModelCall] = []  # the recorded step's model calls so far
        self._scaled: Any = None
        self._clipped: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None  # id(p) -> (grad, its norm)
        self._backwards = 0
        self._writer: Any = None
        self._jsonl: io.TextIOBase | None = None
        self._judge: Any = None
        self._locator: Any = None
        self._rank = 0
        self._ddp = False
        self.attached = False

    # --- public ---------------------------------------------------------------------------------

    @property
    def internal_errors(self) -> list[str]:
        return [f"{text} ({n} times)" if n > 1 else text for text, n in self._faults.items()]

    def attach(self) -> GradientMonitor:
        """Install the hooks (idempotent); returns the monitor."""
        if self.attached:
            return self
        from torch.utils.weak import WeakTensorKeyDictionary

        from gradwise.doctor._alerts import Judge

        self._scaled = WeakTensorKeyDictionary()
        self._judge = Judge(self)
        self._rank, self._ddp = _distributed(self._models)
        inst = self._inst = Instrumentation(on_fault=self._fault)
        try:
            for prefix, module in self._models:
                self._add_model(prefix, module)
            inst.optimizer_step_pre(self._apart(self._step_pre))
            inst.wrap_before(torch.autograd, "backward", self._apart(self._backward))
            inst.wrap(torch.amp.GradScaler, "scale", self._scale)
            for owner in (torch.nn.utils, torch.nn.utils.clip_grad):
                for name in ("clip_grad_norm_", "clip_grad_value_", "clip_grad_norm"):
                    if hasattr(owner, name):
                        inst.wrap_before(owner, name, self._apart(self._clipping))
            if self._rank == 0:
                self._open_outputs()
        except BaseException:
            self._close()
            raise
        self.attached = True
        return self

    def detach(self) -> None:
        """Remove every hook, finish a pending localisation, close the log (idempotent)."""
        if not self.attached:
            return
        self.attached = False
        self._close()

    def __enter__(self) -> GradientMonitor:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def all_history(self) -> list[dict]:
        return self.history + list(self._latest)

    def to_html(self, title: str = "gradwise monitor") -> str:
        """The self-contained HTML report of the recorded steps."""
        from gradwise.doctor._html import render_html

        return render_html(self.all_history(), title=title)

    def _repr_html_(self) -> str:
        from gradwise.doctor._html import render_fragment

        return render_fragment(self.all_history())

    # --- models, optimizers -----------------------------------------------------------------

    def _add_model(self, prefix: str, module: nn.Module) -> None:
        inner = unwrap_module(module)
        self._roots.append(weakref.ref(inner))
        self._inst.module_hook(inner, self._apart(self._model_call), pre=True)
        for name, p in inner.named_parameters():
            if self._mine(p):
                continue
            self._name(p, prefix + name)
        for name, m in inner.named_modules():
            if isinstance(m, nn.Embedding | nn.EmbeddingBag):
                self.embeddings.update(prefix + (f"{name}." if name else "") + n for n, _ in m.named_parameters())
            known = self._activations.get(id(m))
            if isinstance(m, DEAD + SATURATING) and (known is None or known[0].module() is not m):
                self._activations[id(m)] = [_Activation(prefix + (name or type(m).__name__), weakref.ref(m))]
                self._inst.module_hook(m, self._apart(self._activation))

    def _mine(self, p: Any) -> bool:
        return self._known.get(id(p)) is p

    def _name(self, p: torch.Tensor, name: str) -> None:
        self._known[id(p)] = p
        self._names[id(p)] = name
        self._order[id(p)] = self._name_order[name] = len(self._order)
        self.ndim[name] = p.dim()

    def _doctor_quiet(self) -> contextlib.AbstractContextManager:
        """While the doctor's recorder is armed, the monitor's own arithmetic is not the user's."""
        locator = self._locator
        return locator.quiet() if locator is not None else contextlib.nullcontext()

    def _apart(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            with self._doctor_quiet():
                return fn(*args, **kwargs)

        return run

    def _optimizer(self, opt: Any) -> _Optimizer | None:
        """The record of an optimizer stepping monitored parameters (None: not ours)."""
        if self._optimizers_given and not any(o is opt for o in self._optimizers_given):
            return None
        groups = getattr(opt, "param_groups", None)
        if groups is None:
            return None
        signature = tuple(len(g["params"]) for g in groups)
        rec = self._optimizers.get(opt)
        if rec is not None and rec.signature == signature:
            return rec
        tensors = [p for g in groups for p in g["params"]]
        if not self._models and not any(self._mine(p) for p in tensors):
            self._discover(opt)
        mine = [(self._names[id(p)], p) for p in tensors if self._mine(p)]
        if not mine:
            if self._optimizers_given or not self._models:  # a given optimizer, or a script's: name them by position
                for gi, g in enumerate(groups):
                    for pi, p in enumerate(g["params"]):
                        if not self._mine(p):
                            self._name(p, f"{_variable(opt) or 'optimizer'}.group{gi}.{pi}")
                mine = [(self._names[id(p)], p) for p in tensors if self._mine(p)]
            if not mine:
                self._optimizers[opt] = None
                return None
        mine.sort(key=lambda item: self._order[id(item[1])])
        if rec is not None:
            name = rec.name
        else:  # its variable's name, made unique (Lightning holds every optimizer in a variable named optimizer)
            name = _variable(opt) or "optimizer"
            taken = {r.name for r in self._optimizers.values() if r is not None}
            if name in taken:
                name = next(f"{name} {i}" for i in range(1, len(taken) + 2) if f"{name} {i}" not in taken)
        rec = _Optimizer(weakref.ref(opt), name, mine, signature)
        if opt not in self._optimizers:
            # its own post-hook, not a global one: the global ones are iterated after it, so that arming
            # the doctor's recorder there (which adds a global hook) does not change a dict being iterated
            self._inst.step_post_hook(opt, self._apart(self._step_post))
        self._optimizers[opt] = rec
        return rec

    def _discover(self, opt: Any) -> None:
        """The models holding an optimizer's parameters, among the modules the calling frames
        (and their ``self``) hold by name: ``gradwise monitor`` knows no model in advance."""
        wanted = {id(p) for g in opt.param_groups for p in g["params"]}
        found: list[tuple[str, nn.Module]] = []
        for name, module in _frame_modules():
            inner = unwrap_module(module)
            if any(id(p) in wanted for p in inner.parameters()) and not any(
                inner is unwrap_module(m) for _, m in found
            ):
                found.append((name, module))
        # a module inside another found one is not a model of its own
        roots = [
            (n, m)
            for n, m in found
            if not any(
                o is not m and any(sub is unwrap_module(m) for sub in unwrap_module(o).modules()) for _, o in found
            )
        ]
        for name, module in roots:  # named by their variable: the same names fold after fold, G and D apart
            self._add_model(f"{name}.", module)

    # --- hooks ----------------------------------------------------------------------------------

    def _recorded(self, step: int) -> bool:
        return (step - 1) % self.every == 0

    @property
    def _recording_next(self) -> bool:
        """Whether the step the forward and backward running now belong to is recorded."""
        return self._recorded(self._current if self._current is not None else self.steps + 1)

    def _backward(self, tensors: Any = None, *args: Any, **kwargs: Any) -> None:
        self._backwards += 1
        self._clipped = None
        if not self._recording_next:
            return
        roots = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors or ())
        for r in roots:
            if _floating_tensor(r) and r.numel() == 1:
                loss = self._scaled.get(r)
                self._losses.append((r if loss is None else loss).detach().reshape(()))

    def _scale(self, result: Any, scaler: Any, outputs: Any, *args: Any) -> None:
        if isinstance(result, torch.Tensor) and isinstance(outputs, torch.Tensor):
            self._scaled[result] = outputs

    def _clipping(self, parameters: Any = None, *args: Any, **kwargs: Any) -> None:
        """Before a clip: the gradients the backward produced (their norms, before clipping)."""
        if not self._recording_next or self._clipped is not None:
            return
        if parameters is None:
            parameters = kwargs.get("parameters")
        tensors = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters or ())
        pairs = [
            (p, p.grad)
            for p in tensors
            if isinstance(p, torch.Tensor) and self._mine(p) and p.grad is not None and not p.grad.is_sparse
        ]
        if not pairs:
            return
        norms = _norms([g for _, g in pairs])
        self._clipped = {id(p): (g, n) for (p, g), n in zip(pairs, norms.unbind(), strict=True)}

    def _step_pre(self, opt: Any, args: tuple, kwargs: dict) -> Any:
        rec = self._optimizer(opt)
        if rec is None or not self._capture_at_step:
            return None
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        self.steps += 1
        step = self.steps
        pending = self._begin(rec, step) if self._recorded(step) else None
        if closure is None:
            if pending is not None:
                self._capture(pending)
            return None

        def recorded_closure() -> Any:  # the gradients exist only once the closure ran
            self._current = step
            try:
                value = closure()
            finally:
                self._current = None
            if pending is not None and self.attached:
                try:
                    with self._doctor_quiet():
                        self._capture(pending)
                except Exception as exc:  # never into the user's closure
                    self._fault("optimizer closure", exc)
            return value

        if "closure" in kwargs:
            return args, {**kwargs, "closure": recorded_closure}
        return (args[0], recorded_closure, *args[2:]), kwargs

    def capture(self, opt: Any) -> None:
        """For an integration that calls it where the gradients are final (Lightning's
        ``on_before_optimizer_step``, after AMP unscaling): count and record this step."""
        rec = self._optimizer(opt)
        if rec is None:
            return
        stale = self._pending.pop(id(rec), None)
        if stale is not None:  # its step was skipped (a GradScaler found Inf): the weights did not move
            self._finish(stale)
        self.steps += 1
        self._current = self.steps  # a closure's later evaluations (LBFGS) belong to this step
        if self._recorded(self.steps):
            self._capture(self._begin(rec, self.steps))

    def _begin(self, rec: _Optimizer, step: int) -> _Pending:
        pending = _Pending(step, rec, [], [])
        self._pending[id(rec)] = pending
        return pending

    def _capture(self, pending: _Pending) -> None:
        """The gradient and weight norms of the step's parameters, and a copy of the weights."""
        rec = pending.optimizer
        names, tensors, without = [], [], []
        for name, p in rec.params:
            if p.grad is None:
                without.append(name)
            else:
                names.append(name)
                tensors.append(p)
        pending.names, pending.tensors, pending.without_grad = names, tensors, without
        if not tensors:
            return
        clipped = self._clipped or {}
        pending.sharded = _sharding(tensors)
        first = not pending.copied
        if first:  # the weights first: their norms are then read from the copy, while it is in the cache
            values = [_local(p) for p in tensors]
            if [(b.shape, b.dtype, b.device) for b in rec.buffer] != [(v.shape, v.dtype, v.device) for v in values]:
                rec.buffer = [torch.empty_like(v) for v in values]
            torch._foreach_copy_(rec.buffer, values)
            pending.copied = True
        sharded = pending.sharded
        if clipped and sharded is None and all(id(p) in clipped and clipped[id(p)][0] is p.grad for p in tensors):
            grad_norms = torch.stack([clipped[id(p)][1] for p in tensors])
            if first:
                pending.weight_norms = _norms(rec.buffer)
        elif not first:  # a closure's later evaluation: new gradients; the weights' norm is the step's first
            grad_norms = _norms([_dense(p.grad) for p in tensors])
            if sharded is not None:
                grad_norms = _all_reduce_norms(grad_norms, sharded, _mesh_group(tensors))
        else:
            both = _norms([_dense(p.grad) for p in tensors] + rec.buffer)
            if sharded is not None:
                both = _all_reduce_norms(both, sharded + sharded, _mesh_group(tensors))
            grad_norms, pending.weight_norms = both[: len(tensors)], both[len(tensors) :]
        pending.grad_norms = grad_norms
        if grad_norms.device.type == "cpu":  # reading a CPU tensor is no transfer: know now whether they are finite
            pending.finite = bool(torch.isfinite(grad_norms).all())

    def _step_post(self, opt: Any, args: tuple, kwargs: dict) -> None:
        rec = self._optimizers.get(opt)
        if rec is None:
            return
        if not self._capture_at_step:
            self._current = None
        if self._locator is not None:
            self._locator.after_step()
        pending = self._pending.pop(id(rec), None)
        if pending is not None:
            self._finish(pending)

    def _model_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """A recorded step's model call: its inputs (references) and the RNG state, for a replay."""
        if not self._recording_next or len(self.model_calls) >= _CALLS:
            return
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        self.model_calls.append(ModelCall(weakref.ref(module), args, kwargs, torch.get_rng_state(), cuda, user_site()))

    def _activation(self, module: nn.Module, args: tuple, output: Any) -> None:
        if not self._recording_next or not isinstance(output, torch.Tensor) or not output.is_floating_point():
            return
        if output.dim() < 2 or output.numel() == 0:
            return
        calls = self._activations[id(module)]
        k = self._calls.get(id(module), 0)
        self._calls[id(module)] = k + 1
        if k >= len(calls):
            calls.append(_Activation(f"{calls[0].name}#{k + 1}", calls[0].module))
        act = calls[k]
        out = output.detach()
        if isinstance(module, DEAD):
            dead = out.reshape(out.shape[0], -1).amax(0) <= 0
            if act.dead is not None and act.dead.shape == dead.shape:
                act.dead = act.dead & dead  # dead in every call of the step
            else:
                act.dead = dead
        else:
            if isinstance(module, nn.Tanh):
                tail = out.abs() > TAIL
            else:
                tail = (out < 1 - TAIL) | (out > TAIL)
            counts = torch.stack([tail.sum().to(torch.float32), torch.tensor(float(out.numel()), device=out.device)])
            act.tails = counts if act.tails is None else act.tails + counts

    # --- one recorded step ----------------------------------------------------------------------

    def _finish(self, pending: _Pending) -> None:
        """After the optimizer's step: the update norms, one transfer, the record, the alerts."""
        rec = pending.optimizer
        parts: list[torch.Tensor] = []
        n = len(pending.tensors)
        if n and pending.grad_norms is not None:
            after = [_local(p) for p in pending.tensors]
            if pending.finite:  # in place (a fresh tensor per step costs page faults on a CPU): before - after
                torch._foreach_sub_(rec.buffer, after)
                updates = _norms(rec.buffer)
            else:  # the buffer keeps the weights the step's gradients were computed with: a replay needs them
                updates = _norms(torch._foreach_sub(after, rec.buffer))
            if pending.sharded is not None:
                updates = _all_reduce_norms(updates, pending.sharded, _mesh_group(pending.tensors))
            parts += [pending.grad_norms.to(updates.device), pending.weight_norms.to(updates.device), updates]
        acts = [a for calls in self._activations.values() for a in calls if a.dead is not None or a.tails is not None]
        for a in acts:
            if a.dead is not None:
                a.window.append(a.dead)
                parts.append(a.dead.float().mean().reshape(1))
            else:
                parts.append(a.tails)
        losses, self._losses = self._losses, []
        if losses:
            parts.append(torch.stack([loss.to(torch.float64) for loss in losses]).sum().reshape(1))
        values = [x for part in read(parts) for x in part] if parts else []
        at = 0
        params: dict[str, dict] = {}
        if n and pending.grad_norms is not None:
            grads, weights, updates = values[0:n], values[n : 2 * n], values[2 * n : 3 * n]
            at = 3 * n
            grads = self._exact(pending.tensors, grads)
            for name, p, g, w, u in zip(pending.names, pending.tensors, grads, weights, updates, strict=True):
                bad = 0 if math.isfinite(g) else _nonfinite(p.grad)
                ratio = u / w if w > 0 else (0.0 if u == 0 else math.inf)
                params[name] = {"grad_norm": g, "param_norm": w, "update_ratio": ratio, "nonfinite": bad}
        for name in pending.without_grad:
            params[name] = {"grad_norm": None, "param_norm": None, "update_ratio": 0.0, "nonfinite": 0}
        params = dict(sorted(params.items(), key=lambda item: self._order_of(item[0])))
        modules: dict[str, dict] = {}
        windows: dict[str, tuple[_Activation, float]] = {}
        for a in acts:
            if a.dead is not None:
                fraction = values[at]
                at += 1
                modules[a.name] = {"dead_fraction": fraction, "saturated_fraction": None}
                if isinstance(a.module(), CAN_DIE):
                    windows[a.name] = (a, fraction)
            else:
                tails, total = values[at : at + 2]
                at += 2
                modules[a.name] = {"dead_fraction": None, "saturated_fraction": tails / total if total else None}
            a.dead, a.tails = None, None
        self._calls.clear()
        loss = values[at] if losses else None
        total = total_norm(v["grad_norm"] for v in params.values())
        record = {
            "step": pending.step,
            "loss": loss,
            "optimizer": rec.name,
            "grad_norm_total": total,
            "params": params,
            "modules": modules,
            "findings": [],
        }
        if self._ddp:
            record["rank"] = self._rank
        new = self._judge.judge(record, windows, pending) if self.alerts else []
        self.model_calls = []
        self._emit(record, new)

    def _exact(self, tensors: list[torch.Tensor], grads: list[float]) -> list[float]:
        """A float32 norm overflows above ~1.8e19: those again in float64."""
        over = [i for i, g in enumerate(grads) if math.isinf(g) and bool(torch.isfinite(_local(tensors[i].grad)).all())]
        if over:
            again = _norms([_dense(tensors[i].grad) for i in over], wide=True).tolist()
            for i, v in zip(over, again, strict=True):
                grads[i] = v
        return grads

    def _order_of(self, name: str) -> int:
        return self._name_order.get(name, len(self._name_order))

    def _emit(self, record: dict, new: list[Finding]) -> None:
        self.findings.extend(new)
        late, self._late = self._late, []
        record["findings"] = [f.to_dict() for f in late + new]
        if len(self.history) < _KEEP // 10:
            self.history.append(record)
        else:
            self._latest.append(record)
        if self._locator is not None or self._held:
            self._held.append(record)  # the log waits for the finding its step will carry
        else:
            self._write(record)
        if self._writer is not None:
            from gradwise.integrations.tensorboard import write_record

            write_record(self._writer, record)
        if self.on_record is not None:
            self.on_record(record)
        if self.alerts == "raise" and new:
            raise GradientAlert(new[0], self)

    def _write(self, record: dict) -> None:
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()

    def add_finding(self, finding: Finding, stop: bool = True) -> None:
        """A finding completed after its step's record was made (the non-finite value whose
        line the armed recorder named later): it joins that record's ``findings`` (whose line
        in the log was held back until now), ``findings`` and TensorBoard's text."""
        self.findings.append(finding)
        target = next((r for r in self._held if r["step"] == finding.step), self._held[0] if self._held else None)
        if target is not None:
            target["findings"].append(finding.to_dict())
        else:  # its step's record is being made now (a replay named it at once)
            self._late.append(finding)
        if self._writer is not None:
            from gradwise.integrations.tensorboard import write_findings

            write_findings(self._writer, [finding.to_dict()], finding.step or self.steps)
        if self._locator is None:
            held, self._held = self._held, []
            for record in held:
                self._write(record)
        if stop and self.alerts == "raise":
            raise GradientAlert(finding, self)

    # --- outputs, faults ------------------------------------------------------------------------

    def _open_outputs(self) -> None:
        if self._jsonl_path is not None:
            try:
                self._jsonl = open(self._jsonl_path, "w", encoding="utf-8")  # closed on detach
            except OSError as exc:
                raise ArgumentError(
                    f"monitor: jsonl: cannot write {self._jsonl_path} ({exc.strerror or type(exc).__name__})"
                ) from None
        tb = self._tensorboard
        if isinstance(tb, str | os.PathLike):
            from gradwise._optional import require

            require("tensorboard", purpose="monitor(tensorboard=DIR)")
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(os.fspath(tb))
            self._own_writer = True
        else:
            self._writer = tb
            self._own_writer = False

    def _close(self) -> None:
        if self._locator is not None:
            locator, self._locator = self._locator, None
            locator.close()
        if self._inst is not None:
            self._inst.close()
        self._pending.clear()
        self._losses = []
        for rec in list(self._optimizers.values()):
            if rec is not None:
                rec.buffer = []
        held, self._held = self._held, []
        for record in held:
            self._write(record)
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.flush()
                if getattr(self, "_own_writer", False):
                    self._writer.close()

    def _fault(self, where: str, exc: BaseException) -> None:
        if isinstance(exc, GradientAlert):
            raise exc
        text = f"{where}: {type(exc).__name__}: {exc}"
        self._faults[text] = self._faults.get(text, 0) + 1


# --- helpers ------------------------------------------------------------------------------------


def _models(model: Any) -> list[tuple[str, nn.Module]]:
    if model is None:
        return []
    if isinstance(model, nn.Module):
        return [("", model)]
    if isinstance(model, Mapping):
        out = []
        for key, m in model.items():
            if not isinstance(key, str) or not isinstance(m, nn.Module):
                raise ArgumentTypeError(
                    f"monitor: model must map names (str) to nn.Modules (got {type(key).__name__} -> "
                    f"{type(m).__name__})"
                )
            out.append((f"{key}.", m))
        return out
    if isinstance(model, Sequence) and not isinstance(model, str):
        if not all(isinstance(m, nn.Module) for m in model):
            bad = next(m for m in model if not isinstance(m, nn.Module))
            raise ArgumentTypeError(f"monitor: model must be a list of nn.Modules (got an item {type(bad).__name__})")
        return [(f"{i}.", m) for i, m in enumerate(model)] if len(model) > 1 else [("", m) for m in model]
    raise ArgumentTypeError(
        f"monitor: model must be an nn.Module, a list or dict of them, or None (got {type(model).__name__})"
    )


def _optimizer_list(optimizer: Any) -> list:
    if optimizer is None:
        return []
    items = list(optimizer) if isinstance(optimizer, list | tuple) else [optimizer]
    for o in items:
        if not isinstance(o, torch.optim.Optimizer):
            raise ArgumentTypeError(
                f"monitor: optimizer must be a torch.optim.Optimizer, a list of them, or None (got {type(o).__name__})"
            )
    return items


def _distributed(models: list[tuple[str, nn.Module]]) -> tuple[int, bool]:
    """This process's rank, and whether a monitored model is DDP-wrapped (its gradients at
    the step are the synchronised ones)."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return 0, False
    ddp = any(isinstance(m, nn.parallel.DistributedDataParallel) for _, m in models)
    return torch.distributed.get_rank(), ddp


def _variable(obj: Any) -> str | None:
    from gradwise.doctor._trace import variable_name

    return variable_name(obj)


def _frame_modules() -> Iterator[tuple[str, nn.Module]]:
    """The modules held by name in the user's frames (locals, ``self`` attributes, globals)."""
    from gradwise._frames import is_library

    frame = sys._getframe(1)
    seen: set[int] = set()
    while frame is not None:
        if not is_library(frame.f_code.co_filename):
            scopes = [frame.f_locals]
            owner = frame.f_locals.get("self")
            if owner is not None and hasattr(owner, "__dict__"):
                scopes.append(vars(owner))
            scopes.append(frame.f_globals)
            for scope in scopes:
                for key, value in list(scope.items()):
                    if isinstance(value, nn.Module) and id(value) not in seen and not key.startswith("_"):
                        seen.add(id(value))
                        yield key, value
        frame = frame.f_back


def _dtensor() -> type | None:
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None) if module is not None else None


def _local(t: torch.Tensor) -> torch.Tensor:
    """This process's part of a DTensor (FSDP2's sharded parameters and gradients), else the tensor."""
    t = t.detach()
    dtensor = _dtensor()
    return t.to_local() if dtensor is not None and isinstance(t, dtensor) else t


def _sharding(tensors: list[torch.Tensor]) -> list[bool] | None:
    """Which parameters are DTensors sharded over their mesh (their norms are all-reduced)."""
    dtensor = _dtensor()
    if dtensor is None or not any(isinstance(t, dtensor) for t in tensors):
        return None
    return [isinstance(t, dtensor) and any(pl.is_shard() for pl in t.placements) for t in tensors]


def _mesh_group(tensors: list[torch.Tensor]) -> Any:
    dtensor = _dtensor()
    first = next(t for t in tensors if isinstance(t, dtensor))
    return first.device_mesh.get_group()


def _all_reduce_norms(norms: torch.Tensor, sharded: list[bool], group: Any) -> torch.Tensor:
    """The norms of whole tensors from their shards' norms: the squares of the sharded ones summed over
    the ranks (one all-reduce; every rank steps the same parameters, so every rank calls it)."""
    import torch.distributed as dist

    mask = torch.tensor(sharded, dtype=norms.dtype, device=norms.device)
    squares = norms * norms
    shards = squares * mask
    dist.all_reduce(shards, group=group)
    return (shards + squares * (1 - mask)).sqrt()


def _dense(g: torch.Tensor) -> torch.Tensor:
    g = _local(g)
    return g.coalesce().values() if g.is_sparse else g


def _nonfinite(g: torch.Tensor | None) -> int:
    if g is None:
        return 0
    return int((~torch.isfinite(_dense(g))).sum())  # this process's elements (a shard's, under FSDP2)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a monitor's JSONL log, checked line by line.

    Raises:
        ArgumentError: the file is missing, or a line is not a JSON object with an integer
            ``step`` (the message gives the line number).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ArgumentError(f"report: no such log file: {path}")
    records = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ArgumentError(f"report: {path}:{number} is not JSON ({exc.msg})") from None
            if (
                not isinstance(value, dict)
                or isinstance(value.get("step"), bool)
                or not isinstance(value.get("step"), int)
            ):
                raise ArgumentError(
                    f"report: {path}:{number} is not a monitor record (expected an object with an integer 'step', "
                    f"got {str(value)[:60]})"
                )
            records.append(value)
    return records


@contextlib.contextmanager
def monitor(
    model: nn.Module | Sequence[nn.Module] | Mapping[str, nn.Module] | None = None,
    optimizer: Any = None,
    *,
    every: int = 1,
    jsonl: str | os.PathLike | None = None,
    tensorboard: Any = None,
    alerts: bool | str = True,
) -> Iterator[GradientMonitor]:
    """Monitor the gradients of a long training run (see :class:`GradientMonitor`).

    Example:
        >>> import gradwise as gw
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> with gw.doctor.monitor(model, opt) as mon:
        ...     for _ in range(3):
        ...         opt.zero_grad()
        ...         model(torch.randn(16, 4)).pow(2).mean().backward()
        ...         opt.step()
        >>> [r["step"] for r in mon.history], sorted(mon.history[0]["params"])[:2]
        ([1, 2, 3], ['0.bias', '0.weight'])
        >>> mon.findings
        []
    """
    mon = GradientMonitor(model, optimizer, every=every, jsonl=jsonl, tensorboard=tensorboard, alerts=alerts)
    mon.attach()
    try:
        yield mon
    finally:
        mon.detach()
