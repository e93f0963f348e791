"""watch() and diagnose(): the recorder and the checks over a few training steps.

The :class:`Doctor` is the state of one watch and the context every check works in: the
provenance records, the models and optimizers seen (weakly referenced, by records whose
serial numbers are never reused), which parameters received gradient, and the findings.
It owns the :class:`~gradwise._hooks.Instrumentation` (module and optimizer hooks, the
``Optimizer.__init__`` patch, the recorder), so that everything is removed on exit, also
when the watched code raises. A step ends at each ``backward()``.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing.process
import weakref
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradwise._graph import reachable_leaves, tensors_in, unwrap_module
from gradwise._hooks import Instrumentation
from gradwise.doctor._checks import CHECKS, INPLACE, BackwardEvent, Check, StepEvent, grad_state
from gradwise.doctor._findings import Finding
from gradwise.doctor._provenance import OpEvent, Param, Provenance
from gradwise.doctor._recorder import Recorder
from gradwise.doctor._stats import Stats
from gradwise.doctor._trace import Site, creation_site, locate, user_site, variable_name
from gradwise.errors import ArgumentError, ArgumentTypeError

__all__ = ["Doctor", "ModelRecord", "OptimizerRecord", "StopWatching", "ZeroGradCall", "diagnose", "watch"]

_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


class StopWatching(BaseException):
    """Raised at the first ``backward()`` after the watched steps, when the watch was asked to
    stop there; ``watch`` swallows it. A ``BaseException`` (like ``SystemExit``), so that a
    user's ``except Exception:`` does not."""

    def __init__(self, steps: int):
        super().__init__(f"gradwise doctor: stopped after {steps} watched training step(s)")
        self.steps = steps


@dataclass(eq=False)
class ModelRecord:
    """A model: a module called while no other module was running."""

    key: int
    ref: weakref.ref
    variable: str | None
    site: Site | None
    params: list[Param] = field(default_factory=list)
    merged_into: ModelRecord | None = None  # a later call of an enclosing module

    def module(self) -> nn.Module | None:
        return self.ref()


@dataclass(eq=False)
class OptimizerRecord:
    """An optimizer, with where it was made and stepped."""

    key: int
    ref: weakref.ref
    site: Site | None  # its construction (None: made before the watch)
    variable: str | None
    step_site: Site | None = None
    steps: int = 0
    last_step_at: int | None = None  # the number of watched backward() calls at its last step
    params: set[Param] = field(default_factory=set)  # every parameter ever in its groups
    pending: StepEvent | None = None
    pending_known: bool = True  # in the numerics-only steps: known from the watched steps (its update is measured)

    def optimizer(self) -> Any:
        return self.ref()

    @property
    def where(self) -> Site | None:
        """Its construction line, or where it was stepped when that is unknown."""
        return self.site or self.step_site


@dataclass(frozen=True)
class ZeroGradCall:
    """A ``zero_grad()`` call of an optimizer or a module."""

    site: Site | None
    steps: int  # the number of watched backward() calls before it
    params: frozenset  # the known parameters it cleared
    module: bool  # a module's zero_grad (else an optimizer's)


@dataclass
class _Raw:
    kind: str
    severity: str
    message: str
    site: Site | None
    params: list  # Param records or names
    fix: str
    step: int | None
    data: dict


class Doctor:
    """The state of one :func:`watch`: what was recorded, and the findings.

    Attributes:
        steps: the number of ``backward()`` calls watched.
        stopped: whether the watched code was stopped at the step limit.
        internal_errors: the doctor's own faults, one line each (a fault never breaks the
            user's program; it is counted here and said in the report).
        autograd_grad_calls: how many times ``torch.autograd.grad`` was called.
        child_processes: how many processes the watched code started (their training is
            not watched).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        optimizer: Any = None,
        *,
        max_steps: int | None = None,
        stop: bool = True,
        numerics_steps: int = 0,
    ):
        self.steps = 0
        self.max_steps = max_steps
        self.numerics_steps = numerics_steps
        self.watched: int | None = None  # set when the numerics-only steps begin: the steps fully watched
        self.stop = stop
        self.stopped = False
        self.done = False  # watched enough: the rest runs unobserved
        self.autograd_grad_calls = 0
        self.child_processes = 0
        self._faults: Counter[str] = Counter()
        self._raw: dict[tuple, _Raw] = {}
        self._findings: list[Finding] | None = None
        self.provenance = Provenance(name_leaf=variable_name)
        self.models: list[ModelRecord] = []
        self._model_of: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> ModelRecord
        self.optimizers: list[OptimizerRecord] = []
        self._optimizer_of: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._serial = itertools.count()
        self.reached: set[Param] = set()  # parameters some backward (or autograd.grad) gave a gradient
        self.ever_optimized: set[Param] = set()
        self.grad_read: set[Param] = set()  # leaves whose .grad the user's code read
        self.grad_inputs: set[Param] = set()  # leaves passed to torch.autograd.grad as inputs
        self.called_modules: weakref.WeakSet = weakref.WeakSet()
        self._depth = 0
        self.module_stack: list[nn.Module] = []  # the modules running now, innermost last
        self._made_at: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # torch module -> its user line
        self.stats = Stats(self)
        self._closures: list[OptimizerRecord] = []
        self._alive: list[nn.Module] = []  # the watched steps' models, held until the checks finish
        # module -> (mode, user line, serial) of the last train()/eval() call that reached it
        self.mode_calls: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._mode_serial = 0
        self.zero_grad_calls: deque[ZeroGradCall] = deque(maxlen=32)  # the latest zero_grad() calls
        self._crash: int | None = None  # id of the error the watched code ended with
        # inside an optimizer's step (outside its closure): its own arithmetic is not recorded. Also
        # cleared by the next forward or backward, in case a step raised (no post-hook then).
        self.stepping = False
        # set by the monitor when it arms a watch after an update wrote non-finite values into the weights: a
        # birth in the step's own computation is then the cause, the weights' NaN its result
        self.weights_known_nonfinite = False
        self.inst = Instrumentation(on_fault=self.fault)
        self.checks: list[Check] = [cls(self) for cls in CHECKS]
        self.subscribers: dict[str, list[Check]] = {}
        for check in self.checks:
            for op in check.ops:
                self.subscribers.setdefault(op, []).append(check)
        self.inplace_subscribers = self.subscribers.get(INPLACE, [])
        if model is not None:
            self._add_model(model)
        if optimizer is not None:
            self._optimizer_record(optimizer, None)

    # --- state for the checks ---------------------------------------------------------------

    @property
    def recording(self) -> bool:
        return self.inst.active and not self.done

    @property
    def numerics_only(self) -> bool:
        """In the steps after the watched ones, watched for non-finite values only: no other
        check sees them, and nothing new (models, optimizers, provenance) is learnt."""
        return self.watched is not None

    @property
    def watched_steps(self) -> int:
        """The steps every check watched."""
        return self.steps if self.watched is None else self.watched

    @property
    def in_optimizer(self) -> bool:
        """Inside an optimizer's step and outside its closure."""
        return self.stepping and not self._closures

    def fault(self, where: str, exc: BaseException) -> None:
        """Count an internal error of the doctor (never raises)."""
        self._faults[f"{where}: {type(exc).__name__}: {exc}"] += 1

    @property
    def internal_errors(self) -> list[str]:
        return [f"{text} ({n} times)" if n > 1 else text for text, n in self._faults.items()]

    def check(self, kind: str) -> Check:
        return next(c for c in self.checks if c.kind == kind)

    def optimized_now(self) -> set[Param]:
        """The parameters in the groups of the optimizers alive now."""
        out: set[Param] = set()
        for rec in self.optimizers:
            opt = rec.optimizer()
            if opt is not None:
                out.update(self._params_of(opt))
        return out

    def optimizers_holding(self, params) -> list[OptimizerRecord]:
        """The optimizers that hold any of ``params``, most of them first."""
        params = set(params)
        scored = [(len(rec.params & params), rec) for rec in self.optimizers]
        return [rec for n, rec in sorted(scored, key=lambda x: -x[0]) if n]

    def meant_to_train(self, p: Param) -> bool:
        """Whether a parameter is meant to learn by gradient: in some optimizer, or any
        trainable parameter when no optimizer is known (a hand-written update); never one the
        user's code updates in place from other parameters (an EMA teacher, a target network
        synced with load_state_dict), whether or not it is also in an optimizer."""
        if p in self.provenance.copied or self.is_buffer(p):
            return False  # updated in place from other parameters (an EMA, a synced copy), or state
        if p in self.ever_optimized or not self.optimizers:
            return True
        return p in self.optimized_now()

    def is_buffer(self, p: Param) -> bool:
        """Whether a leaf is a buffer of a known model (some libraries switch requires_grad on
        for a buffer, such as a constant zero loss): state, not a parameter."""
        t = p.tensor()
        if t is None or isinstance(t, nn.Parameter):
            return False
        for model in self.models:
            module = model.module()
            if module is not None and any(b is t for b in module.buffers()):
                return True
        return False

    def starved(self, p: Param) -> bool:
        """A parameter meant to train that no watched backward gave a gradient."""
        return p not in self.reached and self.meant_to_train(p)

    def trained(self, model: ModelRecord) -> bool:
        return any(p in self.reached for p in model.params)

    @staticmethod
    def _root(model: ModelRecord) -> ModelRecord:
        while model.merged_into is not None:
            model = model.merged_into
        return model

    # --- findings ---------------------------------------------------------------------------

    def add(
        self,
        kind: str,
        severity: str,
        message: str,
        site: Site | None,
        params=(),
        fix: str = "",
        *,
        step: int | None = None,
        data: dict | None = None,
    ) -> None:
        """Report a finding; the same kind at the same line (and sub-kind) is reported once,
        with the parameters of every sighting."""
        data = dict(data or {})
        key = (kind, site, data.get("subkind"))
        raw = self._raw.get(key)
        if raw is not None:
            raw.params.extend(p for p in params if p not in raw.params)
            return
        self._raw[key] = _Raw(kind, severity, message, site, list(params), fix, step, data)
        self._findings = None

    def withdraw(self, kind: str) -> list[Finding]:
        """Take back the findings of ``kind`` (a later check found their cause); returns them."""
        taken = [f for f in self.findings if f.kind == kind]
        self._raw = {key: raw for key, raw in self._raw.items() if raw.kind != kind}
        self._findings = None
        return taken

    def name(self, p: Param | str) -> str:
        """A parameter's name: its qualified name in its model (prefixed by the model's variable
        when several models take part), else the variable that held it."""
        if isinstance(p, str):
            return p
        if p.model is not None and p.qualname is not None:
            return self._prefix(self._root(p.model)) + p.qualname
        return p.variable or f"tensor{p.shape}"

    def _prefix(self, model: ModelRecord) -> str:
        roots = [m for m in self.models if m.merged_into is None and m.params]
        if len({m.variable or m.key for m in roots}) < 2:
            return ""
        return f"{model.variable or f'model{model.key}'}."

    @property
    def findings(self) -> list[Finding]:
        """The :class:`~gradwise.doctor.Finding` list, errors first, in the order found."""
        if self._findings is None:
            out = []
            for raw in self._raw.values():
                names = tuple(sorted({self.name(p) for p in raw.params}))
                file, line = (raw.site.file, raw.site.line) if raw.site is not None else (None, None)
                out.append(Finding(raw.kind, raw.severity, raw.message, file, line, names, raw.fix, raw.step, raw.data))
            out.sort(key=lambda f: _SEVERITY_ORDER.get(f.severity, 3))
            self._findings = out
        return list(self._findings)

    def report(self) -> str:
        """The findings as text (see :func:`gradwise.doctor.format_report`)."""
        from gradwise.doctor._report import format_report

        return format_report(
            self.findings,
            steps=self.watched_steps,
            numerics_steps=self.steps - self.watched_steps,
            stopped=self.stopped,
            internal_errors=self.internal_errors,
            autograd_grad_calls=self.autograd_grad_calls,
            child_processes=self.child_processes,
        )

    def to_json(self) -> str:
        """The findings as JSON, the schema of ``gradwise doctor --json`` (``script`` and ``crashed`` null)."""
        from gradwise.doctor._report import to_json

        return to_json(
            self.findings,
            steps=self.watched_steps,
            numerics_steps=self.steps - self.watched_steps,
            stopped=self.stopped,
            internal_errors=self.internal_errors,
        )

    # --- models and optimizers ----------------------------------------------------------------

    def _add_model(self, module: nn.Module) -> None:
        inner = unwrap_module(module)
        if inner in self._model_of:
            return
        rec = ModelRecord(next(self._serial), weakref.ref(inner), variable_name(module) or _class_name(inner), None)
        self._alive.append(inner)  # until the checks finish: a model local to a function that returned is judged too
        rec.site = user_site()
        for sub in inner.modules():
            previous = self._model_of.get(sub)
            if previous is not None and previous.module() is sub:
                previous.merged_into = rec  # an earlier model turns out to be part of this one
            self._model_of[sub] = rec
        for qualname, t in inner.named_parameters():
            p = self.provenance.param(t)
            p.model, p.qualname = rec, qualname
            owner = inner.get_submodule(qualname.rsplit(".", 1)[0]) if "." in qualname else inner
            p.made_at = self._made_at.get(owner) or p.made_at
            rec.params.append(p)
        self.models.append(rec)

    def model_of(self, p: Param) -> ModelRecord | None:
        return None if p.model is None else self._root(p.model)

    def _forward_pre(self, module: nn.Module, args: tuple) -> None:
        self.stepping = False
        if not self.numerics_only:
            self.called_modules.add(module)
            if self._depth == 0:
                self._add_model(module)
                self._dispatch("on_model_call", module, args)
        self._depth += 1
        self.module_stack.append(module)
        self.provenance.in_forward = True

    def _forward_post(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._depth = max(0, self._depth - 1)
        while self.module_stack:  # a module whose forward raised never reached its post hook
            if self.module_stack.pop() is module:
                break
        self.provenance.in_forward = self._depth > 0

    def _optimizer_record(self, optimizer: Any, site: Site | None) -> OptimizerRecord:
        rec = self._optimizer_of.get(optimizer)
        if rec is None:
            rec = OptimizerRecord(next(self._serial), weakref.ref(optimizer), site, variable_name(optimizer))
            self._optimizer_of[optimizer] = rec
            self.optimizers.append(rec)
            rec.params.update(self._params_of(optimizer))
            self.ever_optimized |= rec.params
        return rec

    def _params_of(self, optimizer: Any) -> list[Param]:
        return [
            self.provenance.param(t)
            for group in getattr(optimizer, "param_groups", ())
            for t in group.get("params", ())
            if isinstance(t, torch.Tensor)
        ]

    def _known_params_of(self, optimizer: Any) -> list[Param]:
        """The parameters of ``optimizer`` that have records (none is made)."""
        out = []
        for group in getattr(optimizer, "param_groups", ()):
            for t in group.get("params", ()):
                p = self.provenance.known(t) if isinstance(t, torch.Tensor) else None
                if p is not None:
                    out.append(p)
        return out

    def _optimizer_created(self, optimizer: Any) -> None:
        if not self.numerics_only:
            self._optimizer_record(optimizer, user_site())

    def _step_pre(self, optimizer: Any, args: tuple, kwargs: dict):
        if self.numerics_only:
            return self._numerics_step_pre(optimizer, args, kwargs)
        rec = self._optimizer_record(optimizer, None)
        rec.step_site = user_site()
        params = self._params_of(optimizer)
        rec.params.update(params)
        self.ever_optimized.update(params)
        closure = args[1] if len(args) > 1 else kwargs.get("closure")
        event = StepEvent(rec, rec.step_site, self.steps, params, closure is not None)
        rec.pending = event
        self._stats("before_step", event)
        self._dispatch("before_step", event)
        self.stepping = True
        if not callable(closure):
            return None
        wrapped = self._wrap_closure(rec, closure)
        if len(args) > 1:
            return (args[0], wrapped, *args[2:]), kwargs
        return args, {**kwargs, "closure": wrapped}

    def _wrap_closure(self, rec: OptimizerRecord, closure: Callable) -> Callable:
        def closure_under_the_doctor(*args: Any, **kwargs: Any) -> Any:
            self._closures.append(rec)
            try:
                return closure(*args, **kwargs)
            finally:
                self._closures.pop()

        return closure_under_the_doctor

    def _numerics_step_pre(self, optimizer: Any, args: tuple, kwargs: dict) -> None:
        """An optimizer step in the numerics-only steps: the update of an optimizer known from the
        watched steps is measured, and the checks that also watch these steps see it (an
        optimizer first seen now gets a record for them, with the parameters already known)."""
        rec = self._optimizer_of.get(optimizer)
        known = rec is not None
        if rec is None:
            rec = OptimizerRecord(next(self._serial), weakref.ref(optimizer), None, None)
            self._optimizer_of[optimizer] = rec
        rec.step_site = user_site()
        closure = args[1] if len(args) > 1 else kwargs.get("closure")
        rec.pending = StepEvent(rec, rec.step_site, self.steps, self._known_params_of(optimizer), closure is not None)
        if known:
            self._stats("before_step", rec.pending)
        self._dispatch("before_step", rec.pending, numerics=True)
        rec.pending_known = known
        self.stepping = True

    def _step_post(self, optimizer: Any, args: tuple, kwargs: dict) -> None:
        self.stepping = False
        if self.numerics_only:
            rec = self._optimizer_of.get(optimizer)
            if rec is not None and rec.pending is not None:
                if rec.pending_known:
                    self._stats("after_step", rec.pending)
                self._dispatch("after_step", rec.pending, numerics=True)
                rec.pending = None
                rec.steps += 1
                rec.last_step_at = self.steps
            return
        rec = self._optimizer_record(optimizer, None)
        event = rec.pending or StepEvent(rec, rec.step_site, self.steps, self._params_of(optimizer), False)
        rec.pending = None
        self._stats("after_step", event)
        self._dispatch("after_step", event)
        rec.steps += 1
        rec.last_step_at = self.steps

    # --- steps ----------------------------------------------------------------------------------

    def _stats(self, method: str, *args: Any) -> bool:
        try:
            getattr(self.stats, method)(*args)
            return True
        except Exception as exc:
            self.fault(f"numerics ({method})", exc)
            return False

    def _dispatch(self, method: str, *args: Any, numerics: bool = False) -> None:
        for check in self.checks:
            if numerics and not check.numerics:
                continue
            try:
                getattr(check, method)(*args)
            except Exception as exc:
                self.fault(f"{check.kind} check ({method})", exc)

    def backward(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        """A ``backward()`` call: one training step."""
        self.stepping = False
        if self._watched_enough() and self.numerics_steps and self.watched is None:
            self._begin_numerics()
        if self._watched_enough() and self._numerics_step():
            return self._numerics_backward(func, args, kwargs)
        if self._watched_enough():
            self.done = True  # watched enough: every callback is inert from now on
            self.inst.disable()
            if self.stop:
                self.stopped = True
                raise StopWatching(self.steps)
            return func(*args, **kwargs)
        with self.inst.quiet():
            try:
                event = self._backward_event(args, kwargs)
                unseen = {p: grad_state(p) for p in event.unseen}
            except Exception as exc:
                self.fault("backward (before)", exc)
                self.steps += 1
                return func(*args, **kwargs)
            self._stats("before_backward", event)
            self._dispatch("before_backward", event)
            try:
                result = func(*args, **kwargs)
            except Exception as exc:
                self._stats("end_backward")
                self._stats("next_step")
                self.reached |= event.reached  # what it would have reached: its failure is another finding
                self._dispatch("on_backward_error", event, exc)
                self.steps += 1
                raise
            try:
                event.late = {p for p in event.unseen if grad_state(p) != unseen[p]}
                event.reached |= event.late
            except Exception as exc:
                self.fault("backward (after)", exc)
            self.reached |= event.reached
            event.numbers = self.stats.history[-1] if self._stats("after_backward", event) else None
            self._dispatch("after_backward", event)
            self._stats("next_step")
            self.steps += 1
        return result

    def op_failed(self, event: OpEvent, error: BaseException) -> None:
        """A recorded operation raised (the recorder re-raises it)."""
        with self.inst.quiet():
            self._dispatch("on_op_error", event, error)

    def crashed(self, error: BaseException) -> None:
        """The watched code ended by raising ``error`` (not :class:`StopWatching`): the checks
        that explain a crash (shape-mismatch) report it; once per error."""
        if isinstance(error, StopWatching) or self._crash == id(error):
            return
        self._crash = id(error)  # not the error: its traceback would keep the user's tensors alive
        self._dispatch("on_crash", error)
        self._findings = None

    def _numerics_step(self) -> bool:
        """Whether this backward, past the watched steps, is one of the ``numerics_steps``
        watched for non-finite values only (until the first is found)."""
        if self.watched is None or self.check("non-finite").found:
            return False
        return self.steps < self.watched + self.numerics_steps

    def _begin_numerics(self) -> None:
        """The watched steps are over (at the backward() that would have stopped the watch): the
        checks that judge them alone finish now, while what they judge (a model local to a function that returns) is
        still alive, and the next steps are watched for non-finite values only."""
        for check in self.checks:
            if not check.numerics:
                try:
                    check.finish()
                except Exception as exc:
                    self.fault(f"{check.kind} check (finish)", exc)
        self.watched = self.steps
        self._alive.clear()

    def _numerics_backward(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        """A backward() past the watched steps: the loss and gradients are read, and only the
        numerics checks see it."""
        with self.inst.quiet():
            try:
                roots = tensors_in(args[:1]) or tensors_in([kwargs.get("tensors")])
                inputs = kwargs.get("inputs")
                leaves = reachable_leaves(roots) if inputs is None else tensors_in([inputs])
                known = (self.provenance.known(t) for t in leaves if t.requires_grad)
                event = BackwardEvent(self.steps, user_site(), roots, [None] * len(roots), {p for p in known if p})
            except Exception as exc:
                self.fault("backward (before)", exc)
                self.steps += 1
                return func(*args, **kwargs)
            self._stats("before_backward", event)
            self._dispatch("before_backward", event, numerics=True)
            try:
                result = func(*args, **kwargs)
            except Exception:
                self._stats("end_backward")
                self._stats("next_step")
                self.steps += 1
                raise
            event.numbers = self.stats.history[-1] if self._stats("after_backward", event) else None
            self._dispatch("after_backward", event, numerics=True)
            self._stats("next_step")
            self.steps += 1
        return result

    def _watched_enough(self) -> bool:
        """``max_steps`` backward calls, extended (up to ``_EXTEND`` times as many) while an
        optimizer has stepped fewer than twice: gradients accumulating across an optimizer's
        steps (a missing ``zero_grad``) show only from its second step, and a loop that
        accumulates gradients over several backward calls steps less often. A single watched
        step (``steps=1``) is never extended."""
        if self.watched is not None:
            return True  # in (or past) the numerics-only steps
        if self.max_steps is None or self.steps < self.max_steps:
            return False
        if self.max_steps < 2 or self.steps >= _EXTEND * self.max_steps:
            return True
        return not any(rec.steps < 2 and rec.optimizer() is not None for rec in self.optimizers if rec.params)

    def _backward_event(self, args: tuple, kwargs: dict) -> BackwardEvent:
        roots = tensors_in(args[:1]) or tensors_in([kwargs.get("tensors")])
        inputs = kwargs.get("inputs")
        leaves = reachable_leaves(roots) if inputs is None else tensors_in([inputs])
        reached = {self.provenance.param(t) for t in leaves if t.requires_grad}
        infos = [self.provenance.info(r) for r in roots]
        closure = self._closures[-1] if self._closures else None
        # parameters in the loss's value that the walk does not reach: a backward can still fill
        # their gradient (a reentrant checkpoint recomputes its block during backward)
        prov = set().union(*(info.prov for info in infos if info is not None))
        unseen = {p for p in prov - reached if p.tensor() is not None}
        return BackwardEvent(self.steps, user_site(), roots, infos, reached, closure, unseen)

    def autograd_grad(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        """``torch.autograd.grad``: not a training step, but its inputs receive a gradient."""
        self.autograd_grad_calls += 1
        with self.inst.quiet():
            try:
                inputs = args[1] if len(args) > 1 else kwargs.get("inputs")
                for t in tensors_in([inputs]):
                    if t.requires_grad and t.is_leaf:
                        p = self.provenance.param(t)
                        self.grad_inputs.add(p)
                        self.reached.add(p)
            except Exception as exc:
                self.fault("torch.autograd.grad", exc)
            return func(*args, **kwargs)

    def _from_numpy(self, out: torch.Tensor, array: Any, *args: Any, **kwargs: Any) -> None:
        """``torch.from_numpy``, which no TorchFunctionMode sees: a NumPy round trip re-enters here."""
        if self.done:
            return
        rewrapped = None if self.numerics_only else self.provenance.rewrap(array, self.steps)
        site, _ = locate()
        event = OpEvent("torch.from_numpy", "from_numpy", site, (array,), {}, [], out, [out], None, self.steps, True)
        if rewrapped is not None:
            self.provenance.observe(event, rewrapped)
        self.stats.on_op(event)

    def _scaled(self, out: Any, scaler: Any, outputs: Any, *args: Any, **kwargs: Any) -> None:
        """``GradScaler.scale(loss)``: its backward's infinite gradients are the scaler's to handle."""
        enabled = getattr(scaler, "is_enabled", lambda: True)()
        if enabled and isinstance(out, torch.Tensor) and isinstance(outputs, torch.Tensor):
            self.stats.scaled[out] = outputs

    def _mode_set(self, result: Any, module: Any, mode: bool = True, *args: Any, **kwargs: Any) -> None:
        """``module.train(mode)`` / ``module.eval()``: which call left each module in its mode
        (a call recurses into the children, which finish first: the outermost call is last)."""
        if not self.done and isinstance(module, nn.Module):
            self.mode_calls[module] = (bool(mode), user_site(), self._mode_serial)
            self._mode_serial += 1

    def _unscaled(self, result: Any, scaler: Any, optimizer: Any, *args: Any, **kwargs: Any) -> None:
        """``GradScaler.unscale_(optimizer)`` (also from inside ``scaler.step``)."""
        if not self.done:
            self._dispatch("on_unscale", self._known_params_of(optimizer), numerics=self.numerics_only)

    def _clipping(self, parameters: Any = None, *args: Any, **kwargs: Any) -> None:
        """``clip_grad_norm_`` / ``clip_grad_value_``, before they run."""
        if self.done:
            return
        if parameters is None:
            parameters = kwargs.get("parameters")
        tensors = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters or ())
        params = [p for p in (self.provenance.known(t) for t in tensors if isinstance(t, torch.Tensor)) if p]
        self._dispatch("on_clip", user_site(), params, numerics=self.numerics_only)

    def _zeroed(self, result: Any, owner: Any, *args: Any, **kwargs: Any) -> None:
        """``optimizer.zero_grad()`` / ``module.zero_grad()``: where, and after how many backward calls."""
        if self.done:
            return
        if isinstance(owner, nn.Module):
            tensors = list(owner.parameters())
        else:
            tensors = [t for g in getattr(owner, "param_groups", ()) for t in g.get("params", ())]
        params = frozenset(p for p in (self.provenance.known(t) for t in tensors) if p is not None)
        self.zero_grad_calls.append(ZeroGradCall(user_site(), self.steps, params, isinstance(owner, nn.Module)))

    def _module_made(self, result: Any, module: Any, *args: Any, **kwargs: Any) -> None:
        if not self.done and type(module).__module__.startswith("torch."):
            self._made_at.setdefault(module, user_site())  # the innermost call: nn.Linear(...) itself

    def construction_site(self, module: nn.Module) -> Site | None:
        """Where a module was made: the user line that constructed a torch layer
        (``nn.Linear(...)``, also inside a list or an ``nn.Sequential(...)`` spanning lines),
        else the ``self.name = ...`` line of its owner's ``__init__``."""
        site = self._made_at.get(module)
        if site is not None:
            return site
        for model in self.models:
            root = model.module()
            if root is None:
                continue
            for qualname, sub in root.named_modules():
                if sub is module and qualname:
                    return creation_site(root, qualname)
        return None

    def _process_started(self, result: Any, *args: Any, **kwargs: Any) -> None:
        self.child_processes += 1

    def grad_was_read(self, t: torch.Tensor) -> None:
        p = self.provenance.known(t)
        if p is not None:
            self.grad_read.add(p)

    # --- the watch ------------------------------------------------------------------------------

    def _start(self) -> None:
        inst = self.inst
        try:
            inst.ignore_warning(r"Using `torch.compile\(module\)` when there are global hooks on modules")
            inst.module_forward_pre(self._forward_pre)
            inst.module_forward(self._forward_post)
            inst.optimizer_step_pre(self._step_pre)
            inst.optimizer_step_post(self._step_post)
            inst.optimizer_created(self._optimizer_created)
            inst.wrap(torch, "from_numpy", self._from_numpy)
            inst.wrap(torch.amp.GradScaler, "scale", self._scaled)
            inst.wrap(nn.Module, "__init__", self._module_made)
            inst.wrap(nn.Module, "train", self._mode_set)
            inst.wrap(torch.optim.Optimizer, "zero_grad", self._zeroed)
            inst.wrap(torch.amp.GradScaler, "unscale_", self._unscaled)
            for module in (torch.nn.utils, torch.nn.utils.clip_grad):
                for name in ("clip_grad_norm_", "clip_grad_value_", "clip_grad_norm"):
                    if hasattr(module, name):
                        inst.wrap_before(module, name, self._clipping)
            inst.wrap(nn.Module, "zero_grad", self._zeroed)
            inst.wrap(multiprocessing.process.BaseProcess, "start", self._process_started)
            inst.enter(Recorder(self))
        except BaseException:
            inst.close()
            raise

    def _finish(self) -> None:
        self.inst.close()
        self.done = True
        self._stats("release")
        if self.watched is None:
            self._dispatch("finish")
        else:  # the other checks finished when the numerics-only steps began
            self._dispatch("finish", numerics=True)
        self._alive.clear()
        self._findings = None


_EXTEND = 4  # the most a watch is extended, as a multiple of its steps


def _class_name(module: nn.Module) -> str:
    name = type(module).__name__
    return "".join(f"_{c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(name))


@contextlib.contextmanager
def watch(
    model: nn.Module | None = None,
    optimizer: Any = None,
    *,
    steps: int | None = None,
    stop: bool = True,
    numerics_steps: int = 0,
) -> Iterator[Doctor]:
    """Watch training steps and diagnose their gradient flow.

    Use around one or more training steps (a step ends at each ``backward()``); models and
    optimizers may be created inside or outside the block, several of them. Afterwards
    ``dr.findings`` holds the :class:`Finding` list and ``dr.report()`` the text report.
    Models, global hooks and modes are left exactly as they were, also when the block
    raises; losses and gradients are the ones computed without the doctor.

    Args:
        model: a model (optional: modules called during the block are found anyway).
        optimizer: an optimizer (optional: optimizers created or stepped during the block
            are found anyway; passing one made before the block lets the doctor know it
            from the start).
        steps: watch this many steps (a step ends at each ``backward()``; with 2 or more,
            extended up to 4 times as many while an optimizer has stepped fewer than twice,
            so that gradients accumulating across its steps can be seen); at the next
            ``backward()`` the block is stopped with :class:`StopWatching` (swallowed by
            ``watch``), or with ``stop=False`` left to run on unobserved.
        stop: see ``steps``.
        numerics_steps: after the watched steps, watch up to this many more for non-finite
            values (``non-finite``: the loss and the gradients, with the op and line where
            the first NaN/Inf was born) and the cheap loop checks (``eval-mode``,
            ``step-without-gradient``, ``graph-leak``, ``unscaled-clip``), which need no
            provenance; no other check sees them. ``gradwise doctor`` uses 4 x ``--steps``:
            a loss often turns NaN a few steps into training, and a validation's ``eval()``
            comes at the first epoch boundary.

    Raises:
        ArgumentTypeError: ``model`` is not an ``nn.Module`` or ``optimizer`` not a
            ``torch.optim.Optimizer``.
        ArgumentError: ``steps`` is not a positive integer.

    Example:
        >>> import gradwise as gw
        >>> model = torch.nn.Linear(4, 3)
        >>> with gw.doctor.watch() as dr:
        ...     logits = model(torch.randn(8, 4))
        ...     choice = logits.argmax(-1).float()
        ...     loss = ((choice - 1.0) ** 2).mean().requires_grad_()
        ...     loss.backward()
        >>> sorted({f.kind for f in dr.findings})
        ['graph-break', 'requires-grad-bandaid']
    """
    if model is not None and not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"watch: model must be a torch.nn.Module or None (got {type(model).__name__})")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise ArgumentTypeError(
            f"watch: optimizer must be a torch.optim.Optimizer or None (got {type(optimizer).__name__})"
        )
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ArgumentError(f"watch: steps must be a positive integer or None (got {steps!r})")
    if isinstance(numerics_steps, bool) or not isinstance(numerics_steps, int) or numerics_steps < 0:
        raise ArgumentError(f"watch: numerics_steps must be a non-negative integer (got {numerics_steps!r})")
    doctor = Doctor(model, optimizer, max_steps=steps, stop=stop, numerics_steps=numerics_steps)
    doctor._start()
    try:
        yield doctor
    except StopWatching:
        pass
    except BaseException as exc:
        doctor.crashed(exc)
        raise
    finally:
        doctor._finish()


def diagnose(step_fn: Callable, *args: Any, steps: int = 1, model: nn.Module | None = None, optimizer=None) -> Doctor:
    """Run ``step_fn(*args)`` ``steps`` times under :func:`watch` and return the doctor.

    Example:
        >>> import gradwise as gw
        >>> model = torch.nn.Linear(3, 1)
        >>> def step(x):
        ...     model(x).detach().sum().requires_grad_().backward()
        >>> [f.kind for f in gw.doctor.diagnose(step, torch.randn(4, 3), steps=2).findings]
        ['graph-break', 'requires-grad-bandaid']
    """
    if not callable(step_fn):
        raise ArgumentTypeError(f"diagnose: step_fn must be callable (got {type(step_fn).__name__})")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ArgumentError(f"diagnose: steps must be a positive integer (got {steps!r})")
    with watch(model, optimizer) as doctor:
        for _ in range(steps):
            step_fn(*args)
    return doctor
