"""The hot paths of :class:`gradwise.ops._estimators.HardChoice`, as custom ops with a torch
reference and Triton kernels.

``GRADWISE_KERNELS`` picks the path per call (:mod:`gradwise._backend`). The Triton path
serves:

- the forward k-hot, with or without Gumbel noise (``argmax_onehot``, ``topk_mask``,
  ``sample_onehot``, ``gumbel_topk``, ``gumbel_softmax(hard=True)``), for ``k <= 64``;
- the backward of the ``st``, ``softmax``, ``gumbel`` and ``reinmax`` rules, for a float
  ``tau`` or a tensor ``tau`` that needs no gradient, when the backward itself is not
  differentiated (``create_graph=True`` and nested ``torch.func.grad`` take the reference);

on rows of at most :data:`MAX_COLUMNS` classes. Everything else (``gumbel-rao``, a gradient
for ``tau``, longer rows, larger ``k``) runs the reference, which computes the same function.

The kernels are ``torch.library`` ops, ``gradwise::hard_forward`` and
``gradwise::hard_backward`` (``triton_op`` where torch has it, so ``torch.compile`` sees
the kernels; an opaque ``custom_op`` with a fake implementation before torch 2.6 and under
Triton's interpreter), with vmap rules, defined on first use so that ``import gradwise``
never imports triton.
"""

from __future__ import annotations

import functools

import torch

from gradwise import _backend
from gradwise.ops import _noise
from gradwise.ops._kernels import _reference

MAX_COLUMNS = 8192
"""The longest row (classes along ``dim``) a kernel takes; longer rows run the reference."""
MAX_K = 64
"""The largest ``k`` the forward kernel takes (it selects one class per pass over the row)."""

_KERNEL_RULES = ("st", "softmax", "gumbel", "reinmax")


def noise(logits: torch.Tensor, k: int, dim: int, generator) -> torch.Tensor:
    """The random input of a sampling op: int32 bits for the forward kernel, which makes the
    Gumbel noise from them in registers; the noise itself for the torch path."""
    bits = _noise.bits(logits.shape, device=logits.device, generator=generator)
    if _forward_kernel(logits, k, dim):
        return bits
    return _noise.gumbel_from_bits(bits, _noise.compute_dtype(logits.dtype))


def _forward_kernel(logits: torch.Tensor, k: int, dim: int) -> bool:
    return _backend.use_triton(logits) and logits.shape[dim] <= MAX_COLUMNS and k <= MAX_K


def hard_forward(logits: torch.Tensor, noise: torch.Tensor | None, k: int, dim: int) -> torch.Tensor:
    """The k-hot of the top-``k`` of ``logits + noise`` along ``dim`` (``noise``: None, the
    Gumbel noise, or the int32 bits it is made from)."""
    if (noise is None or not noise.is_floating_point()) and _forward_kernel(logits, k, dim):
        rows, shape = _rows(logits, dim)
        out = _ops().hard_forward(rows, None if noise is None else _rows(noise, dim)[0], k)
        return _unrows(out, shape, dim)
    return _reference.hard_forward(logits, noise, k, dim)


def kernel_backward(
    estimator: str,
    grad: torch.Tensor,
    logits: torch.Tensor,
    noise: torch.Tensor | None,
    hard: torch.Tensor,
    tau: float | torch.Tensor,
    k: int,
    dim: int,
) -> torch.Tensor | None:
    """The gradient w.r.t. ``logits`` by a kernel, or None when the reference must compute it
    (not the Triton path, or a case the kernels do not take; ``noise`` as in :func:`hard_forward`)."""
    bits = None if noise is None or noise.is_floating_point() else noise
    if estimator == "gumbel" and bits is None:
        return None
    if estimator not in _KERNEL_RULES or logits.shape[dim] > MAX_COLUMNS or not _backend.use_triton(logits):
        return None
    if torch.is_grad_enabled() and (grad.requires_grad or logits.requires_grad):
        return None  # a double backward (create_graph, torch.func.grad of a grad): the reference is differentiable
    g, shape = _rows(grad, dim)
    z = _rows(logits, dim)[0]
    tau_rows, tau_value = None, 1.0
    if isinstance(tau, torch.Tensor) or logits.dtype == torch.float64:
        # one temperature per row (float64 inputs: a float64 tau, which a scalar argument is not)
        t = torch.as_tensor(tau, dtype=_noise.compute_dtype(logits.dtype), device=logits.device)
        size = list(logits.shape)
        size[dim] = 1
        tau_rows = t.expand(size).movedim(dim, -1).reshape(-1).contiguous()
    else:
        tau_value = float(tau)
    out = _ops().hard_backward(
        g,
        z,
        None if bits is None or estimator != "gumbel" else _rows(bits, dim)[0],
        _rows(hard, dim)[0] if estimator == "reinmax" else None,
        tau_rows,
        tau_value,
        k,
        estimator,
    )
    return _unrows(out, shape, dim)


def _rows(t: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Size]:
    moved = t.movedim(dim, -1)
    return moved.reshape(-1, moved.shape[-1]).contiguous(), moved.shape


def _unrows(t: torch.Tensor, shape: torch.Size, dim: int) -> torch.Tensor:
    return t.reshape(shape).movedim(-1, dim)


class _Ops:
    """The two custom ops, defined once."""

    def __init__(self) -> None:
        from triton import cdiv as triton_cdiv

        from gradwise.ops._kernels import _triton

        # triton_op lets torch.compile trace into the kernels; Triton's interpreter cannot be
        # traced, so there (and before torch 2.6) the ops are opaque custom ops with a fake
        define = None if _backend.interpret() else getattr(torch.library, "triton_op", None)
        launch = _backend.launch

        def forward(logits: torch.Tensor, bits: torch.Tensor | None, k: int) -> torch.Tensor:
            r, c = logits.shape
            out = torch.empty_like(logits)
            rows, block, warps = _triton.launch_shape(c)
            launch(
                _triton.forward_kernel,
                (triton_cdiv(r, rows),),
                logits,
                logits if bits is None else bits,
                out,
                r,
                c,
                k,
                HAS_NOISE=bits is not None,
                F64=logits.dtype == torch.float64,
                ROWS=rows,
                BLOCK=block,
                num_warps=warps,
            )
            return out

        def backward(
            grad: torch.Tensor,
            logits: torch.Tensor,
            bits: torch.Tensor | None,
            hard: torch.Tensor | None,
            tau_rows: torch.Tensor | None,
            tau: float,
            k: int,
            rule: str,
        ) -> torch.Tensor:
            r, c = logits.shape
            out = torch.empty_like(logits)
            rows, block, warps = _triton.launch_shape(c)
            launch(
                _triton.backward_kernel,
                (triton_cdiv(r, rows),),
                grad,
                logits,
                logits if bits is None else bits,
                logits if hard is None else hard,
                logits if tau_rows is None else tau_rows,
                out,
                r,
                c,
                tau,
                k,
                RULE=_triton.RULES[rule],
                TAU_ROWS=tau_rows is not None,
                F64=logits.dtype == torch.float64,
                ROWS=rows,
                BLOCK=block,
                num_warps=warps,
            )
            return out

        if define is not None:
            self.forward = define("gradwise::hard_forward", mutates_args=())(forward)
            self.backward = define("gradwise::hard_backward", mutates_args=())(backward)
        else:
            self.forward = torch.library.custom_op("gradwise::hard_forward", mutates_args=())(forward)
            self.backward = torch.library.custom_op("gradwise::hard_backward", mutates_args=())(backward)
            self.forward.register_fake(lambda logits, bits, k: torch.empty_like(logits))
            self.backward.register_fake(lambda grad, logits, *rest: torch.empty_like(logits))
        for op in (self.forward, self.backward):
            op.register_vmap(functools.partial(_vmap_rule, op))


def _vmap_rule(op, info, in_dims, *args):
    """Both ops work row by row on the last dimension: the vmapped dimension becomes more rows."""
    moved = []
    for arg, bdim in zip(args, in_dims, strict=True):
        if isinstance(arg, torch.Tensor):
            arg = arg.movedim(bdim, 0) if bdim is not None else arg.expand(info.batch_size, *arg.shape)
            arg = arg.reshape(-1, arg.shape[-1]) if arg.dim() > 2 else arg.reshape(-1) if arg.dim() == 2 else arg
        moved.append(arg)
    out = op(*moved)
    return out.reshape(info.batch_size, -1, out.shape[-1]), 0


_defined: list[_Ops] = []


@torch.compiler.disable
def _define() -> None:
    if not _defined:
        _defined.append(_Ops())


def _ops():
    """``torch.ops.gradwise``, with the two ops defined (the first call imports triton)."""
    if not _defined:
        _define()
    return torch.ops.gradwise
