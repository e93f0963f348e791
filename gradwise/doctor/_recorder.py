"""The recorder: a TorchFunctionMode that turns torch operations into events.

For each operation of the user's code it finds the user source line, runs the operation,
updates the provenance records and dispatches the event only to the checks that asked for
that operation. ``backward()`` and ``torch.autograd.grad`` go to the doctor. Operations
made by torch's optimizers, gradient scaler and clipping utilities (their work on
parameters and gradients) and pure metadata queries are not recorded. The recorder only
looks: each operation runs exactly once, with its own arguments, and a fault of the
recorder is counted, never raised.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.overrides import TorchFunctionMode

from gradwise._graph import tensors_in
from gradwise._losses import op_names
from gradwise.doctor._provenance import PROPERTIES, REWRAP, OpEvent, is_inplace
from gradwise.doctor._trace import locate

if TYPE_CHECKING:
    from gradwise.doctor._watch import Doctor

__all__ = ["Recorder"]

_BACKWARD = frozenset({"torch.Tensor.backward", "torch.autograd.backward"})
_GRAD = "torch.autograd.grad"
_METADATA = frozenset(
    {"size", "dim", "numel", "stride", "is_floating_point", "is_complex", "is_contiguous", "data_ptr"}
    | {"element_size", "__len__", "get_device", "storage_offset", "__format__", "__repr__", "nelement"}
    | {"__hash__", "untyped_storage", "is_set_to", "__reduce_ex__", "__deepcopy__", "_is_view"}
)
_NO_PROVENANCE = frozenset({"requires_grad_", "retain_grad", "register_hook"})


class Recorder(TorchFunctionMode):
    def __init__(self, doctor: Doctor):
        super().__init__()
        self.doctor = doctor

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        doctor = self.doctor
        if not doctor.recording or doctor.in_optimizer or torch.compiler.is_compiling():
            return func(*args, **kwargs)  # an optimizer's own arithmetic is not the user's
        try:
            name, op = op_names(func)
        except Exception as exc:
            doctor.fault("naming an operation", exc)
            return func(*args, **kwargs)
        if name in _BACKWARD:
            return doctor.backward(func, args, kwargs)
        if name == _GRAD:
            return func(*args, **kwargs) if doctor.numerics_only else doctor.autograd_grad(func, args, kwargs)
        if op in _METADATA:
            return func(*args, **kwargs)
        accessor = name.endswith(("__get__", "__set__"))
        if accessor and op not in PROPERTIES:
            out = func(*args, **kwargs)
            if doctor.numerics_only:
                return out
            try:
                self._accessor(name, op, args, kwargs, out)
            except Exception as exc:
                doctor.fault(f"operation {name}", exc)
            return out
        try:
            site, internal = locate()
            if internal:  # an optimizer's or the gradient scaler's own work
                return func(*args, **kwargs)
            inputs = tensors_in(args)
            if kwargs:
                inputs += tensors_in(kwargs.values())
            mutated = args[0] if args and isinstance(args[0], torch.Tensor) and is_inplace(op, kwargs) else None
            learn = not doctor.numerics_only  # past the watched steps: the numerics only
            rewrapped = doctor.provenance.rewrap(args[0], doctor.steps) if learn and op in REWRAP and args else None
        except Exception as exc:
            doctor.fault(f"operation {name}", exc)
            return func(*args, **kwargs)
        try:
            out = func(*args, **kwargs)
        except Exception as exc:
            if learn:
                doctor.op_failed(
                    OpEvent(
                        name, op, site, args, kwargs, inputs, None, [], mutated, doctor.steps, torch.is_grad_enabled()
                    ),
                    exc,
                )
            raise
        try:
            event = OpEvent(
                name,
                op,
                site,
                args,
                kwargs,
                inputs,
                out,
                tensors_in((out,)) if not isinstance(out, torch.Tensor) else [out],
                mutated,
                doctor.steps,
                torch.is_grad_enabled(),
            )
            if learn and op not in _NO_PROVENANCE:
                doctor.provenance.observe(event, rewrapped)
        except Exception as exc:
            doctor.fault(f"operation {name}", exc)
            return out
        try:
            doctor.stats.on_op(event)
        except Exception as exc:
            doctor.fault(f"numerics of {name}", exc)
        if not learn:
            return out
        self._dispatch(doctor.subscribers.get(op, ()), event)
        if mutated is not None:
            self._dispatch(doctor.inplace_subscribers, event)
        return out

    def _dispatch(self, checks, event: OpEvent) -> None:
        for check in checks:
            try:
                check.on_op(event)
            except Exception as exc:
                self.doctor.fault(f"{check.kind} check (on_op)", exc)

    def _accessor(self, name: str, op: str, args: tuple, kwargs: dict, out: Any) -> None:
        """Reading ``.grad`` (a user consuming a gradient) and setting ``.requires_grad``."""
        doctor = self.doctor
        subscribers = doctor.subscribers.get(op)
        if op == "grad" and name.endswith("__get__") and args and isinstance(args[0], torch.Tensor):
            site, internal = locate()
            if not internal:
                doctor.grad_was_read(args[0])
            return
        if subscribers:
            site, internal = locate()
            if internal:
                return
            event = OpEvent(name, op, site, args, kwargs, tensors_in(args), out, [], None, doctor.steps, True)
            self._dispatch(subscribers, event)
