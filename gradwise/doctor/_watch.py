"""The doctor's engine: record torch operations with their user source lines while training
steps run, then ask at each ``backward()`` which parameters lost their gradient and where.

Every tensor an operation produces gets a small record: the user line that made it, the
step it was made in, the parameters its *value* depends on (through any operation, also
``argmax``, ``detach``, ``.item()``), and the cuts and zero-derivative operations on the
way. At ``backward()`` the parameters the loss's value depends on are compared with the
parameters its autograd graph reaches: the difference lost its gradient, and the cuts on
the way say where. Nothing is changed in the computation: the recorder only looks.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import inspect
import textwrap
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules import module as _module_hooks
from torch.optim import optimizer as _optimizer_hooks
from torch.overrides import TorchFunctionMode, resolve_name
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakTensorKeyDictionary

from gradwise.doctor._findings import Finding
from gradwise.doctor._trace import Site, user_frame, user_site, user_stack

_BACKWARD = {"torch.Tensor.backward", "torch.autograd.backward"}
_EXTRACT = {"torch.Tensor.item", "torch.Tensor.tolist", "torch.Tensor.numpy"}
_REWRAP = {"torch.tensor", "torch.as_tensor", "torch.from_numpy", "torch.Tensor.new_tensor", "torch.asarray"}
_BANDAID = {"torch.Tensor.requires_grad_", "torch.Tensor.requires_grad.__set__"}
_ZERO_DERIVATIVE = {"round", "floor", "ceil", "trunc", "sign", "fix", "round_", "floor_", "ceil_", "sign_"}
_CLAMPS = {"clamp", "clip", "clamp_", "clip_", "hardtanh"}
_NOT_INPLACE = {"requires_grad_", "share_memory_", "retain_grad"}
_DUNDER_INPLACE = {"__iadd__", "__isub__", "__imul__", "__itruediv__", "__ipow__", "__setitem__", "__iand__", "__ior__"}
_LOSSES = {
    "cross_entropy",
    "nll_loss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "mse_loss",
    "l1_loss",
    "smooth_l1_loss",
    "huber_loss",
}


@dataclass(frozen=True)
class _Cut:
    site: Site | None
    op: str
    reason: str
    params: frozenset  # keys of the parameters whose gradient path it cut


@dataclass(frozen=True)
class _ZeroOp:
    site: Site | None
    op: str
    params: frozenset


@dataclass
class _Info:
    site: Site | None
    step: int
    op: str
    prov: frozenset
    cuts: frozenset
    zeros: frozenset


_EMPTY = frozenset()


def _short(name: str) -> str:
    return name.rsplit(".", 2)[-2] if name.endswith(("__get__", "__set__")) else name.rsplit(".", 1)[-1]


class _Recorder(TorchFunctionMode):
    def __init__(self, doctor: Doctor):
        super().__init__()
        self.doctor = doctor

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        doctor = self.doctor
        if doctor._paused or doctor._done:
            return func(*args, **kwargs)
        name = resolve_name(func) or getattr(func, "__name__", str(func))
        if name in _BACKWARD:
            return doctor._backward(func, args, kwargs)
        doctor._paused = True
        try:
            site = user_site()
            inputs = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
            rewrap_prov = doctor._rewrap_provenance(name, args) if name in _REWRAP else None
        finally:
            doctor._paused = False
        out = func(*args, **kwargs)
        doctor._paused = True
        try:
            doctor._observe(name, site, inputs, args, kwargs, out, rewrap_prov)
        except Exception as exc:  # the doctor must never break the user's program
            doctor._internal_errors.append(f"{name}: {type(exc).__name__}: {exc}")
        finally:
            doctor._paused = False
        return out


class Doctor:
    """The state of one ``watch()``: what was recorded, and the findings so far.

    Attributes:
        findings: the :class:`~gradwise.doctor.Finding` list, in the order found.
        steps: the number of ``backward()`` calls watched.
    """

    def __init__(
        self, model: nn.Module | None = None, optimizer=None, *, max_steps: int | None = None, stop: bool = True
    ):
        self.findings: list[Finding] = []
        self.steps = 0
        self.max_steps = max_steps
        self.stop = stop
        self._paused = False
        self._info = WeakTensorKeyDictionary()
        self._names: dict[int, str] = {}  # id(parameter) -> qualified name
        self._module_named: set[int] = set()
        self._params: dict[int, weakref.ref] = {}
        self._roots: list[nn.Module] = []
        self._depth = 0
        self._used: set[int] = set()
        self._extracted: list[tuple[object, frozenset, frozenset, Site | None, str]] = []
        self._optimizers: dict[int, tuple[weakref.ref, Site | None]] = {}
        self._stepped: dict[int, Site | None] = {}  # params stepped since their last backward -> step site
        self._stale_uses: list[tuple[Site | None, Site | None, tuple[int, ...]]] = []
        self._inplace: list[tuple[Site | None, str, tuple[int, ...]]] = []
        self._bandaids: list[tuple[Site | None, frozenset]] = []
        self._pending: list[tuple[set, frozenset, Site | None]] = []
        self._seen: set[tuple] = set()
        self._internal_errors: list[str] = []
        self._stop_requested = False
        self._done = False
        if model is not None:
            self._add_root(model)
        if optimizer is not None:
            self._optimizers[id(optimizer)] = (weakref.ref(optimizer), None)

    # --- reporting ---------------------------------------------------------------------

    def report(self) -> str:
        """The findings as text (see :func:`gradwise.doctor.format_report`)."""
        from gradwise.doctor._report import format_report

        return format_report(self.findings, steps=self.steps)

    def _add(self, kind, severity, message, site, params=(), fix="") -> None:
        names = tuple(sorted(params))
        key = (kind, site, names)
        if key in self._seen:
            return
        self._seen.add(key)
        file, line = (site.file, site.line) if site is not None else (None, None)
        self.findings.append(Finding(kind, severity, message, file, line, names, fix))

    # --- parameters and modules ---------------------------------------------------------

    def _add_root(self, module: nn.Module) -> None:
        if any(module is r for r in self._roots):
            return
        self._roots.append(module)
        prefix = "" if len(self._roots) == 1 else type(module).__name__ + "."
        for name, p in module.named_parameters():
            if id(p) not in self._params or id(p) not in self._module_named:
                self._names[id(p)] = prefix + name  # a module's name beats a variable's
                self._params[id(p)] = weakref.ref(p)
                self._module_named.add(id(p))

    def _forward_pre(self, module, args) -> None:
        if self._depth == 0 and not self._paused:
            self._add_root(module)
        self._depth += 1

    def _forward_post(self, module, args, output) -> None:
        self._depth = max(0, self._depth - 1)

    def _name_leaf(self, t: torch.Tensor) -> None:
        """A leaf tensor that requires grad and is no module's parameter: name it after the
        user variable holding it."""
        if id(t) in self._names:
            return
        frame = user_frame()
        name = None
        for scope in (frame.f_locals, frame.f_globals) if frame is not None else ():
            for key, value in scope.items():
                if value is t:
                    name = key
                    break
            if name:
                break
        self._names[id(t)] = name or f"tensor{tuple(t.shape)}"
        self._params[id(t)] = weakref.ref(t)

    def _param_name(self, key: int) -> str:
        return self._names.get(key, f"tensor@{key:x}")

    def _live_params(self) -> Iterator[tuple[int, torch.Tensor]]:
        for key, ref in list(self._params.items()):
            p = ref()
            if p is not None:
                yield key, p

    # --- recording ----------------------------------------------------------------------

    def _prov_of(self, t: torch.Tensor) -> _Info | None:
        return self._info.get(t)

    def _observe(self, name, site, inputs, args, kwargs, out, rewrap_prov) -> None:
        short = _short(name)
        if (name.endswith("__get__") and short != "data") or (name.endswith("__set__") and short != "requires_grad"):
            return  # reading or writing metadata (is_leaf, .grad, ...) is no computation
        inplace = (short.endswith("_") and not short.startswith("__") and short not in _NOT_INPLACE) or (
            short in _DUNDER_INPLACE or kwargs.get("inplace") is True
        )
        mutated = args[0] if inplace and args and isinstance(args[0], torch.Tensor) else None
        outputs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        if not outputs and name not in _EXTRACT and name not in _BANDAID:
            return  # dim(), size(), is_floating_point(), ...: metadata, no computation
        step = self.steps
        prov, cuts, zeros = set(), set(), set()
        grad_prov = set()
        for t in inputs:
            info = self._info.get(t)
            if info is None:
                if t.requires_grad and t.is_leaf and t is not mutated:  # a parameter (or a leaf the user trains)
                    key = id(t)
                    if key not in self._names:
                        self._name_leaf(t)
                    self._used.add(key)
                    prov.add(key)
                    grad_prov.add(key)
                elif t.grad_fn is not None:  # history made before the watch began: a stale-graph suspect
                    self._stale_uses.append((None, user_stack(), (), t))
                    del self._stale_uses[:-8]
                continue
            prov |= info.prov
            cuts |= info.cuts
            zeros |= info.zeros
            if t.requires_grad:
                grad_prov |= info.prov
                if info.step < step and t.grad_fn is not None:
                    self._stale_uses.append((info.site, user_stack(), tuple(info.prov), None))
                    del self._stale_uses[:-8]
        if rewrap_prov is not None:
            extra_prov, extra_cuts = rewrap_prov
            prov |= extra_prov
            cuts |= extra_cuts

        if name in _EXTRACT and inputs and prov:
            cut = _Cut(site, short, "extract", frozenset(grad_prov)) if grad_prov else None
            self._extracted.append((out, frozenset(prov), frozenset(cuts | ({cut} if cut else set())), site, short))
            del self._extracted[:-256]
            return
        if name in _BANDAID:
            target = args[0] if args else None
            wants = args[1] if len(args) > 1 else kwargs.get("requires_grad", True)
            info = self._info.get(target) if isinstance(target, torch.Tensor) else None
            if wants and info is not None and info.prov and target.grad_fn is None:
                self._bandaids.append((site, info.prov))
            return
        if short in _LOSSES and len(args) >= 2:
            self._check_loss(name, site, args, kwargs)

        if mutated is not None and (mutated.requires_grad or mutated in self._info):
            self._inplace.append((site, short, tuple(mutated.shape)))

        if mutated is not None and all(o is not mutated for o in outputs):
            outputs.append(mutated)
        if not prov:
            return
        grad_enabled = torch.is_grad_enabled()
        for o in outputs:
            o_cuts, o_zeros = cuts, zeros
            if grad_prov and not o.requires_grad:
                reason = (
                    "no_grad"
                    if not grad_enabled
                    else "detach"
                    if short in ("detach", "detach_")
                    else "data"
                    if short == "data"
                    else "boolean"
                    if o.dtype == torch.bool
                    else "integer"
                    if not (o.is_floating_point() or o.is_complex())
                    else "other"
                )
                o_cuts = cuts | {_Cut(site, short, reason, frozenset(grad_prov))}
            elif grad_prov and o.requires_grad and (short in _ZERO_DERIVATIVE or _saturated(short, args, kwargs)):
                o_zeros = zeros | {_ZeroOp(site, short, frozenset(grad_prov))}
            existing = self._info.get(o)
            if existing is not None and o is mutated:
                existing.prov = existing.prov | frozenset(prov)
                existing.cuts = existing.cuts | frozenset(o_cuts)
                existing.zeros = existing.zeros | frozenset(o_zeros)
            else:
                self._info[o] = _Info(site, step, short, frozenset(prov), frozenset(o_cuts), frozenset(o_zeros))

    def _rewrap_provenance(self, name, args):
        """Provenance of ``torch.tensor(x)`` where x came from ``.item()``/``.tolist()``/``.numpy()``."""
        if not args or not self._extracted:
            return None
        data = args[0]
        flat = _flat_values(data)
        prov, cuts = set(), set()
        for values, p, c, _site, _op in self._extracted:
            if values is data or (flat and _overlap(flat, _flat_values(values))):
                prov |= p
                cuts |= c
        return (frozenset(prov), frozenset(cuts)) if prov else None

    def _check_loss(self, name, site, args, kwargs) -> None:
        from gradwise._loss_input import check_loss_input

        func = getattr(torch.nn.functional, _short(name), None)
        if func is None:
            return
        options = {k: v for k, v in kwargs.items() if k in ("ignore_index", "label_smoothing")}
        problem = check_loss_input(functools.partial(func, **options) if options else func, args[0], args[1])
        if problem is not None:
            info = self._info.get(args[0])
            params = [self._param_name(k) for k in info.prov] if info is not None else []
            self._add(
                "loss-input",
                "error" if problem.severity == "error" else "warning",
                problem.message,
                site,
                params,
                problem.fix,
            )

    # --- steps --------------------------------------------------------------------------

    def _backward(self, func, args, kwargs):
        self._paused = True
        try:
            if self.max_steps is not None and self.steps >= self.max_steps:
                self._check_missing_zero_grad()
                if self.stop:
                    self._stop_requested = True
                    raise StopWatching(self.steps)
                self._done = True  # watched enough: let the script run on, unobserved
        finally:
            self._paused = self._done
        if self._done:
            return func(*args, **kwargs)
        self._paused = True
        try:
            site = user_site()
            roots = [a for a in tree_flatten(args[:1])[0] if isinstance(a, torch.Tensor)]
            self._before_backward(roots, site)
        finally:
            self._paused = False
        before = {key: p.grad.detach().clone() for key, p in self._live_params() if p.grad is not None}
        try:
            result = func(*args, **kwargs)
        except RuntimeError as exc:
            self._paused = True
            try:
                self._explain(exc, roots, site)
            finally:
                self._paused = False
            raise
        self._paused = True
        try:
            self._after_backward(roots, before)
        finally:
            self.steps += 1
            self._paused = False
        return result

    def _reachable(self, roots) -> set[int]:
        seen, found = set(), set()
        stack = [r.grad_fn for r in roots if r.grad_fn is not None]
        for r in roots:
            if r.requires_grad and r.is_leaf:
                found.add(id(r))
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            variable = getattr(node, "variable", None)
            if variable is not None:
                found.add(id(variable))
            stack.extend(n for n, _ in node.next_functions)
        return found

    def _before_backward(self, roots, site) -> None:
        self._check_missing_zero_grad()
        reachable = self._reachable(roots)
        trainable = {k for k, p in self._live_params() if p.requires_grad}
        for root in roots:
            info = self._info.get(root)
            if info is not None and (info.prov & trainable) - reachable:
                # decided at the end of the watch, when the optimizers are known
                self._pending.append(((info.prov & trainable) - reachable, info.cuts, site))

    def _emit_graph_breaks(self) -> None:
        for candidates, cuts, site in self._pending:
            broken = {k for k in candidates if self._optimized_or_unknown(k)}
            if not broken:
                continue
            by_site: dict[tuple, set] = {}
            for cut in cuts:
                hit = cut.params & broken
                if hit:
                    by_site.setdefault((cut.site, cut.op, cut.reason), set()).update(hit)
            explained = set().union(*by_site.values()) if by_site else set()
            for (cut_site, op, reason), keys in by_site.items():
                self._graph_break(cut_site, op, reason, keys)
            rest = broken - explained
            if rest:
                self._add(
                    "graph-break",
                    "error",
                    f"{len(rest)} parameter(s) took part in computing the loss but get no gradient: the "
                    f"autograd path from them to the loss is cut (by an operation the doctor could not place)",
                    site,
                    [self._param_name(k) for k in rest],
                    "Look for .detach(), .data, torch.no_grad(), .item() or integer results between these "
                    "parameters and the loss.",
                )
            for bandaid_site, prov in self._bandaids:
                if prov & broken:
                    real = next(iter(by_site))[0] if by_site else None
                    self._add(
                        "requires-grad-bandaid",
                        "error",
                        "requires_grad is switched on for a result that has no autograd history: this silences "
                        "PyTorch's 'does not require grad' error, and nothing upstream trains"
                        + (f" (the real cut is at {real})" if real else ""),
                        bandaid_site,
                        [self._param_name(k) for k in prov & broken],
                        "Remove the requires_grad line and fix the cut it hides (see the graph-break finding).",
                    )

    def _graph_break(self, site, op, reason, keys) -> None:
        fixes = {
            "no_grad": "Compute this outside torch.no_grad() (keep no_grad for evaluation only).",
            "detach": "Remove the .detach() (if the stop-gradient is deliberate, leave these parameters out of the "
            "optimizer).",
            "data": "Use the tensor itself instead of .data.",
            "extract": f".{op}() turns the tensor into Python numbers and torch.tensor(...) makes a new leaf without "
            f"history: keep the value as a tensor.",
        }
        if reason in ("integer", "boolean"):
            if op in ("argmax", "argmin", "topk", "sort", "argsort", "max", "min"):
                fix = (
                    f"{op} returns integer indices, which carry no gradient. For a classification loss pass the "
                    f"logits to F.cross_entropy; for a hard choice that must train use gw.ops.argmax_onehot(logits) "
                    f"(or gw.ops.topk_mask / gw.ops.sample_onehot)."
                )
            elif op in ("gt", "lt", "ge", "le", "eq", "ne", "__gt__", "__lt__", "__ge__", "__le__", "__eq__"):
                fix = (
                    "A comparison returns booleans, which carry no gradient: use a smooth gate such as "
                    "torch.sigmoid((x - t) / tau), or gw.ops.sign_ste for a hard step with a straight-through "
                    "gradient."
                )
            else:
                fix = (
                    f"{op} gives an integer tensor, which carries no gradient: keep it floating (gw.ops.round_ste "
                    f"rounds with a straight-through gradient)."
                )
        else:
            fix = fixes.get(
                reason, f"{op} returns a tensor without autograd history: keep the computation in autograd."
            )
        what = {
            "no_grad": f"{op} runs under torch.no_grad()",
            "detach": "detach() cuts the autograd graph",
            "data": ".data bypasses autograd",
            "extract": f".{op}() leaves autograd",
            "integer": f"{op} returns an integer tensor",
            "boolean": f"{op} returns a boolean tensor",
        }.get(reason, f"{op} returns a tensor without autograd history")
        self._add(
            "graph-break",
            "error",
            f"{what}, so {len(keys)} parameter(s) that take part in the loss get no gradient.",
            site,
            [self._param_name(k) for k in keys],
            fix,
        )

    def _optimized_or_unknown(self, key: int) -> bool:
        """Whether the parameter is meant to train: in some optimizer, or no optimizer known.
        (A target network updated by copy or EMA is in none.)"""
        groups = self._optimizer_params()
        return not groups or key in groups

    def _optimizer_params(self) -> set[int]:
        keys = set()
        for ref, _site in self._optimizers.values():
            opt = ref()
            if opt is not None:
                for group in opt.param_groups:
                    keys.update(id(p) for p in group["params"])
        return keys

    def _after_backward(self, roots, before) -> None:
        self._stale_uses.clear()  # uses of older history, if any, were legitimate (retain_graph, ...)
        reachable = self._reachable(roots)
        infos = [self._info.get(r) for r in roots]
        zeros = set().union(*(i.zeros for i in infos if i is not None)) if any(infos) else set()
        for key, p in self._live_params():
            if key not in reachable or p.grad is None:
                continue
            prior = before.get(key)
            delta = p.grad if prior is None else p.grad - prior
            if bool((delta == 0).all()) and delta.numel() > 0:
                causes = [z for z in zeros if key in z.params]
                if not causes:  # zero for another reason (a dead unit, a zero mask): not this finding
                    continue
                z = causes[0]
                fix = {
                    "round": "Use gw.ops.round_ste(x) (straight-through rounding) instead of torch.round.",
                    "floor": "Use gw.ops.round_ste (or floor with a straight-through gradient: x + (x.floor() - "
                    "x).detach()).",
                    "ceil": "Use a straight-through ceil: x + (x.ceil() - x).detach().",
                    "sign": "Use gw.ops.sign_ste(x, clip=1.0) instead of torch.sign.",
                }.get(
                    z.op.rstrip("_"),
                    "Keep the clamp's input inside its range (or widen the range): saturated on every element, "
                    "it passes no gradient. For a hard limit that must train, clamp with a straight-through "
                    "gradient (x + (x.clamp(lo, hi) - x).detach()).",
                )
                what = (
                    f"{z.op} is saturated on every element"
                    if z.op in _CLAMPS
                    else (f"{z.op} has a zero derivative almost everywhere")
                )
                self._add(
                    "zero-gradient",
                    "error",
                    what + ": the parameter's gradient is exactly 0, so it never changes.",
                    z.site,
                    [self._param_name(key)],
                    fix,
                )

    def _check_missing_zero_grad(self) -> None:
        stale = []
        for key, p in self._live_params():
            if key in self._stepped and p.grad is not None and bool((p.grad != 0).any()):
                stale.append(key)
        if stale:
            site = self._stepped[stale[0]]
            self._add(
                "missing-zero-grad",
                "error",
                "optimizer.step() was followed by another backward() without zeroing the gradients: each step "
                "adds the new gradient to all the old ones.",
                site,
                [self._param_name(k) for k in stale],
                "Call optimizer.zero_grad() once per optimizer step (before backward); for deliberate gradient "
                "accumulation over k batches, zero after every k-th step.",
            )
        self._stepped.clear()

    def _explain(self, exc: RuntimeError, roots, site) -> None:
        text = str(exc)
        if "backward through the graph a second time" in text:
            made, stack, prov = None, [], ()
            for use_made, use_stack, use_prov, tensor in reversed(self._stale_uses):
                if use_made is None and tensor is not None:  # made before the watch: a module attribute?
                    use_made = self._attribute_site(tensor)
                if use_made is not None or not stack:
                    made, stack, prov = use_made, use_stack, use_prov
                if made is not None:
                    break
            reused = stack[0][0] if stack else site
            where = made
            if made is None or made == reused:
                # made and reused by the same line (a recurrent state): point at the training loop,
                # the frame of the function that calls backward(), where the detach belongs
                caller = user_stack()
                loop = caller[0] if caller else None
                where = next(
                    (s for s, fn in stack if loop and s.file == loop[0].file and fn == loop[1]), made or reused
                )
                reused = where
            self._add(
                "stale-graph",
                "error",
                f"a tensor with autograd history made at {made} in an earlier step is reused at {reused}; its graph "
                f"was freed by the previous backward(), so this backward() fails ('Trying to backward through the "
                f"graph a second time').",
                where,
                [self._param_name(k) for k in prov],
                "Compute the tensor inside forward (for a constrained parameter: gw.constrain(module, name, ...)), "
                "or detach it at the step boundary (hidden = hidden.detach()).",
            )
        elif "modified by an inplace operation" in text:
            shape = _shape_in_message(text)
            needed = text.split("which is output 0 of ")[-1].split(",")[0] if "output 0 of" in text else "an operation"
            candidates = [e for e in self._inplace if shape is None or e[2] == shape]
            where, op, _ = candidates[-1] if candidates else (None, "an in-place operation", ())
            self._add(
                "inplace-modification",
                "error",
                f"{op} modifies in place a tensor that backward needs (saved by {needed}), so backward() fails.",
                where,
                [],
                f"Use the out-of-place form ({op.rstrip('_')}(...) instead of {op}(...), x = x + y instead of "
                f"x += y), or clone() the tensor before modifying it.",
            )
        elif "does not require grad and does not have a grad_fn" in text:
            self._before_backward(roots, site)

    def _attribute_site(self, tensor: torch.Tensor) -> Site | None:
        """Where a tensor kept as a module attribute (``self.x = f(self.raw)``) was assigned."""
        for root in self._roots:
            for prefix, module in root.named_modules():
                for attr, value in vars(module).items():
                    if value is tensor:
                        return _creation_site(root, f"{prefix}.{attr}" if prefix else attr)
        return None

    # --- optimizers -----------------------------------------------------------------------

    def _optimizer_created(self, optimizer, site) -> None:
        self._optimizers[id(optimizer)] = (weakref.ref(optimizer), site)

    def _step_pre(self, optimizer, args, kwargs) -> None:
        if id(optimizer) not in self._optimizers:
            self._optimizers[id(optimizer)] = (weakref.ref(optimizer), None)
        self._step_site = user_site()
        self._paused = True

    def _step_post(self, optimizer, args, kwargs) -> None:
        self._paused = False
        for group in optimizer.param_groups:
            for p in group["params"]:
                self._stepped[id(p)] = self._step_site
        self._check_not_optimized()

    def _check_not_optimized(self) -> None:
        in_groups = self._optimizer_params()
        if not in_groups:
            return
        missing = [
            k for k, p in self._live_params() if p.grad is not None and k not in in_groups and bool((p.grad != 0).any())
        ]
        if missing:
            site = next((s for _r, s in self._optimizers.values() if s is not None), None)
            self._add(
                "parameter-not-optimized",
                "error",
                f"{len(missing)} parameter(s) receive gradients but belong to no optimizer's parameter groups, so "
                f"they never change.",
                site,
                [self._param_name(k) for k in missing],
                "Build the optimizer from model.parameters() (or add the missing ones with "
                "optimizer.add_param_group); if they are meant to stay fixed, set requires_grad=False.",
            )

    # --- end of the watch -----------------------------------------------------------------

    def _finish(self) -> None:
        self._emit_graph_breaks()
        if self.steps == 0:
            return
        for root in self._roots:
            unused: dict[Site | None, list[str]] = {}
            for name, p in root.named_parameters():
                if p.requires_grad and id(p) not in self._used:
                    unused.setdefault(_creation_site(root, name), []).append(self._names.get(id(p), name))
            for site, names in unused.items():
                self._add(
                    "unused-parameter",
                    "warning",
                    f"{len(names)} trainable parameter(s) never used in the forward computation: they get no "
                    f"gradient and waste memory and optimizer state.",
                    site,
                    names,
                    "Use them in forward, delete them, or set requires_grad=False if they are kept on purpose "
                    "(for DDP, find_unused_parameters=True only hides this).",
                )


class StopWatching(Exception):
    """Raised at the first backward() after the watched steps when the watch was asked to stop."""


def _saturated(op: str, args, kwargs) -> bool:
    if op not in _CLAMPS or not args or not isinstance(args[0], torch.Tensor):
        return False
    x = args[0].detach()
    lo = kwargs.get("min", args[1] if len(args) > 1 else None)
    hi = kwargs.get("max", args[2] if len(args) > 2 else None)
    if op == "hardtanh":
        lo = -1.0 if lo is None else lo
        hi = 1.0 if hi is None else hi
    below = x < lo if lo is not None else torch.zeros_like(x, dtype=torch.bool)
    above = x > hi if hi is not None else torch.zeros_like(x, dtype=torch.bool)
    return x.numel() > 0 and bool((below | above).all())


def _flat_values(data) -> list:
    if isinstance(data, float | int) and not isinstance(data, bool):
        return [data]
    if isinstance(data, list | tuple):
        out = []
        for d in data:
            out.extend(_flat_values(d))
        return out
    tolist = getattr(data, "tolist", None)
    if tolist is not None and not isinstance(data, torch.Tensor):
        try:
            return _flat_values(tolist())
        except Exception:
            return []
    return []


def _overlap(a: list, b: list) -> bool:
    if not a or not b:
        return False
    floats_b = {x for x in b if isinstance(x, float)}
    return any(isinstance(x, float) and x in floats_b for x in a)


def _shape_in_message(text: str) -> tuple[int, ...] | None:
    import re

    match = re.search(r"\[torch\.\w+ \[([\d, ]*)\]\]", text)
    if not match:
        return None
    return tuple(int(s) for s in match.group(1).split(",") if s.strip())


def _creation_site(root: nn.Module, qualname: str) -> Site | None:
    """The ``self.<name> = ...`` line in ``__init__`` that created a parameter (or the
    submodule holding it)."""
    parts = qualname.split(".")
    owner = root
    for i, part in enumerate(parts):
        try:
            source_lines, start = inspect.getsourcelines(type(owner).__init__)
            filename = inspect.getsourcefile(type(owner).__init__)
        except (OSError, TypeError):
            source_lines, filename = None, None
        if source_lines and filename and "site-packages" not in filename and "/torch/" not in filename:
            try:
                tree = ast.parse(textwrap.dedent("".join(source_lines)))
            except SyntaxError:
                tree = None
            if tree is not None:
                for node in ast.walk(tree):
                    targets = (
                        node.targets
                        if isinstance(node, ast.Assign)
                        else ([node.target] if isinstance(node, ast.AnnAssign) else [])
                    )
                    for target in targets:
                        if (
                            isinstance(target, ast.Attribute)
                            and target.attr == part
                            and isinstance(target.value, ast.Name)
                            and target.value.id == "self"
                        ):
                            return Site(filename, start + node.lineno - 1)
        child = getattr(owner, part, None)
        if not isinstance(child, nn.Module) or i == len(parts) - 1:
            break
        owner = child
    return None


@contextlib.contextmanager
def watch(
    model: nn.Module | None = None, optimizer=None, *, steps: int | None = None, stop: bool = True
) -> Iterator[Doctor]:
    """Watch training steps and diagnose their gradient flow.

    Use around one or more training steps (a step ends at each ``backward()``); the model
    and optimizer may be created inside or outside the block. Afterwards ``dr.findings``
    holds the :class:`Finding` list and ``dr.report()`` the text report. The model, global
    hooks and modes are left exactly as they were, also when the block raises; losses and
    gradients are the ones computed without the doctor.

    Args:
        model: the model (optional: modules called during the block are found anyway).
        optimizer: the optimizer (optional: optimizers created or stepped during the block
            are found anyway; passing it lets the doctor check parameter groups at once).
        steps: watch this many steps; at the next ``backward()`` the block is stopped with
            :class:`StopWatching` (swallowed by ``watch``), or with ``stop=False`` left to run
            on unobserved.
        stop: see ``steps``.

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
    doctor = Doctor(model, optimizer, max_steps=steps, stop=stop)
    handles = []
    original_init = torch.optim.Optimizer.__init__

    def init_hook(self, *args, **kwargs):
        paused, doctor._paused = doctor._paused, True
        try:
            original_init(self, *args, **kwargs)
        finally:
            doctor._paused = paused
        doctor._optimizer_created(self, user_site())

    try:
        handles.append(_module_hooks.register_module_forward_pre_hook(doctor._forward_pre))
        handles.append(_module_hooks.register_module_forward_hook(doctor._forward_post, always_call=True))
        handles.append(_optimizer_hooks.register_optimizer_step_pre_hook(doctor._step_pre))
        handles.append(_optimizer_hooks.register_optimizer_step_post_hook(doctor._step_post))
        torch.optim.Optimizer.__init__ = init_hook
        with _Recorder(doctor):
            try:
                yield doctor
            except StopWatching:
                pass
    finally:
        torch.optim.Optimizer.__init__ = original_init
        for h in handles:
            h.remove()
        doctor._paused = False
        doctor._finish()


def diagnose(step_fn: Callable, *args, steps: int = 1, model: nn.Module | None = None, optimizer=None) -> Doctor:
    """Run ``step_fn(*args)`` ``steps`` times under :func:`watch` and return the doctor.

    Example:
        >>> import gradwise as gw
        >>> model = torch.nn.Linear(3, 1)
        >>> def step(x):
        ...     model(x).detach().sum().requires_grad_().backward()
        >>> [f.kind for f in gw.doctor.diagnose(step, torch.randn(4, 3), steps=2).findings]
        ['graph-break', 'requires-grad-bandaid']
    """
    with watch(model, optimizer) as doctor:
        for _ in range(steps):
            step_fn(*args)
    return doctor
