"""Hooks that record each ruled layer's input and output gradient during one forward/backward.

A parameter is handled by its layer's rule only if every use of it in the forward pass is
a call of a module that owns it (seen with a ``TorchFunctionMode``); any other use (a
weight read directly by another module) sends it to the exact fallback. Self-attention
layers run a forward that records their projections (``_attention.py``). Hooks, the mode
and those forwards are removed in ``finally``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gradwise._losses import FormTracker
from gradwise.per_sample import _attention
from gradwise.per_sample._attention import Projection
from gradwise.per_sample._rules import RULES, Rule, rule_for


@dataclass
class Record:
    module: Any  # an nn.Module, or an attention layer's input Projection
    rule: Rule
    a: torch.Tensor | None  # the layer input, dropped once its gradient has been used
    out: torch.Tensor | None  # the layer output, kept only where its gradient is asked for by name
    shape: torch.Size
    version: int
    requires_grad: bool
    # "out": its gradient is asked for (kept to the end with the input); "node": consumed by the hook of
    # the node that made it as the backward pass reaches the layer, which frees both early (layers
    # with a bias, reached cheaply through its gradient, and layers with large inputs and outputs)
    route: str


class _UseTracker(FormTracker):
    """Sees which module uses each parameter, and (as a FormTracker) the forms of the tensors
    made, for the loss-input check."""

    def __init__(self, capture: Capture):
        super().__init__()
        self.capture = capture

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        cap = self.capture
        if cap.paused:
            return func(*args, **kwargs)
        inner = cap.stack[-1] if cap.stack else None
        for value in (*args, *kwargs.values()):
            if isinstance(value, nn.Parameter) and id(value) in cap.owners:
                if inner is None or id(inner) not in cap.owners[id(value)]:
                    cap.foreign.add(id(value))
        return super().__torch_function__(func, types, args, kwargs)


class Capture:
    """Context manager: run the forward pass inside it."""

    def __init__(self, module: nn.Module, trainable_ids: set[int]):
        self.stack: list[nn.Module] = []
        self.records: list[Record] = []
        self.owners: dict[int, set[int]] = {}  # id(param) -> ids of ruled modules that own it
        self.foreign: set[int] = set()  # ids of params used outside their owners
        self.ruled: list[nn.Module] = []
        for sub in module.modules():
            if rule_for(sub) is None:
                continue
            own = [p for p in sub.parameters(recurse=False) if id(p) in trainable_ids]
            if own:
                self.ruled.append(sub)
                for p in own:
                    self.owners.setdefault(id(p), set()).add(id(sub))
        self.attentions: list[nn.MultiheadAttention] = []
        for sub in module.modules():
            if isinstance(sub, nn.MultiheadAttention) and _attention.supported(sub):
                own = [p for p in sub.parameters() if id(p) in trainable_ids]
                if own:
                    self.attentions.append(sub)
                    for p in own:
                        self.owners.setdefault(id(p), set()).add(id(sub))
        self.handles: list = []
        self.paused = False
        self.mode = _UseTracker(self)
        # set during the one backward pass that computes the norms: consume(record, gradient at its output)
        self.consume: Callable[[Record, torch.Tensor], None] | None = None

    def _node_grad(self, record: Record, grads: tuple) -> None:
        if self.consume is not None and record.route == "node" and grads[0] is not None:
            self.consume(record, grads[0].reshape(record.shape))

    def _pre(self, module, args):
        self.stack.append(module)

    def _post(self, module, args, output):
        self.stack.pop()
        if not args or not isinstance(args[0], torch.Tensor) or not isinstance(output, torch.Tensor):
            self.foreign.update(id(p) for p in module.parameters(recurse=False))
            return
        self.record(module, args[0], output)

    def _pop(self, module, args, output):
        self.stack.pop()

    def record(self, module: Any, a: torch.Tensor, output: torch.Tensor) -> None:
        """Record a layer call: its input ``a`` and its ``output`` (batch first)."""
        self.paused = True  # our own look at the parameters is not a use
        try:
            self._record(module, a, output)
        finally:
            self.paused = False

    def _record(self, module: Any, a: torch.Tensor, output: torch.Tensor) -> None:
        rule = RULES[nn.Linear] if isinstance(module, Projection) else rule_for(module)
        own = dict(module.named_parameters(recurse=False))
        bias = own.get("bias")
        cheap = bias is not None and bias.requires_grad  # reached through its bias's gradient, a sum
        big = output.numel() + a.numel() > sum(p.numel() for p in own.values() if p.requires_grad)
        route = "node" if cheap or big else "out"
        record = Record(
            module, rule, a.detach(), output if route == "out" else None, output.shape, output._version,
            output.requires_grad, route,
        )  # fmt: skip
        if output.requires_grad:
            # A later in-place op (ReLU(inplace=True)) rewrites the output's history, and when the
            # output is a view (Linear on 3-d input) the node that made it is bypassed; the node of
            # its base still receives the gradient of the value the layer returned.
            node = output.grad_fn
            if output._is_view() and output._base.numel() == output.numel():
                node = output._base.grad_fn
            if node is not None:
                node.register_prehook(lambda grads, record=record: self._node_grad(record, grads))
        self.records.append(record)

    def __enter__(self) -> Capture:
        try:
            for sub in self.ruled:
                self.handles.append(sub.register_forward_pre_hook(self._pre))
                self.handles.append(sub.register_forward_hook(self._post))
            for sub in self.attentions:
                self.handles.append(sub.register_forward_pre_hook(self._pre))
                self.handles.append(sub.register_forward_hook(self._pop))
                sub.forward = functools.partial(_attention.forward, self, sub)
            self.mode.__enter__()
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        for sub in self.attentions:
            sub.__dict__.pop("forward", None)

    def __exit__(self, *exc) -> None:
        try:
            self.mode.__exit__(*exc)
        finally:
            self.remove()
