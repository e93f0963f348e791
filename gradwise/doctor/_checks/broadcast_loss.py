"""broadcast-loss: a loss between a prediction and a target whose shapes differ and broadcast
to a larger shape, so every prediction is compared with every target.

The classic: a regression head with ``out_features=1`` gives ``(B, 1)``, the targets are
``(B,)``, and ``(pred - y)`` (or ``F.mse_loss(pred, y)``, which only warns) is ``(B, B)``:
the loss is finite, decreases a little, and the model learns the mean of the targets.

Judged at each training operation (gradients enabled, a result that requires grad):

- a torch regression loss (``mse_loss``, ``l1_loss``, ``smooth_l1_loss``, ``huber_loss``)
  whose input and target have different shapes that broadcast to a shape larger than both;
- an element-wise ``-``, ``+``, ``*``, ``/`` between two tensors with the same number of
  elements but different ranks, broadcasting to more elements than either: the same
  samples in two shapes, ``(B, 1)`` against ``(B,)``.

Not a finding: a per-feature weight or a scalar (the result is as large as one operand);
``x - x.mean(1, keepdim=True)``; pairwise differences built on purpose, where a singleton
axis is inserted explicitly (``x[:, None] - x[None]``, ``a.unsqueeze(1) - b``, a ``view``
or ``expand`` of a tensor that requires grad, or of any tensor on the same line);
``cdist`` and ``z @ z.T`` (not element-wise); metrics under ``torch.no_grad()``.
"""

from __future__ import annotations

import ast
import math

import torch

from gradwise.doctor._checks import Check
from gradwise.doctor._provenance import OpEvent
from gradwise.doctor._trace import Site, source_line, statement_at

_LOSSES = frozenset({"mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss"})
_ELEMENTWISE = {
    "sub": ast.Sub, "__sub__": ast.Sub, "__rsub__": ast.Sub, "rsub": ast.Sub,
    "add": ast.Add, "__add__": ast.Add, "__radd__": ast.Add,
    "mul": ast.Mult, "__mul__": ast.Mult, "__rmul__": ast.Mult,
    "div": ast.Div, "__truediv__": ast.Div, "__rtruediv__": ast.Div,
}  # fmt: skip
_SHAPED = frozenset({"UnsqueezeBackward0", "ViewBackward0", "ExpandBackward0", "UnsafeViewBackward0"})
_SHAPED = _SHAPED | {"ReshapeAliasBackward0", "AsStridedBackward0", "UnsqueezeBackward1"}
_EXPLICIT_TEXT = ("None", "unsqueeze", "newaxis", "view(", "reshape(", "expand", "[..., ")


class BroadcastLoss(Check):
    kind = "broadcast-loss"
    order = 42
    ops = _LOSSES | frozenset(_ELEMENTWISE)

    def on_op(self, event: OpEvent) -> None:
        if not event.grad_enabled or event.site is None:
            return
        out = event.out
        if not isinstance(out, torch.Tensor) or not out.requires_grad:
            return
        tensors = [a for a in event.args[:2] if isinstance(a, torch.Tensor)]
        if event.op in _LOSSES:
            target = event.kwargs.get("target")
            tensors = tensors + ([target] if isinstance(target, torch.Tensor) else [])
        if len(tensors) != 2:
            return
        a, b = tensors
        if a.shape == b.shape or a.numel() < 2 or b.numel() < 2:
            return
        try:
            shape = torch.broadcast_shapes(a.shape, b.shape)
        except RuntimeError:
            return
        n = math.prod(shape)
        if n <= max(a.numel(), b.numel()):
            return  # one operand broadcast over the other: a weight, a mask, a keepdim statistic
        if event.op not in _LOSSES:
            if a.numel() != b.numel() or a.dim() == b.dim():
                return
            if _explicit(a, event.site) or _explicit(b, event.site):
                return  # pairwise on purpose
        self._report(event, a, b, tuple(shape))

    def _report(self, event: OpEvent, a: torch.Tensor, b: torch.Tensor, shape: tuple) -> None:
        doctor = self.doctor
        loss = event.op in _LOSSES
        left, right = _operands(event.site, event.op)
        left = left or ("input" if loss else "the left operand")
        right = right or ("target" if loss else "the right operand")
        if event.op in ("__rsub__", "rsub", "__radd__", "__rmul__", "__rtruediv__"):
            a, b = b, a
        wide, narrow = (left, right) if a.dim() > b.dim() else (right, left)
        wide_t, narrow_t = (a, b) if a.dim() > b.dim() else (b, a)
        what = f"{event.op}({left}, {right})" if loss else f"{left} {_SYMBOL[_ELEMENTWISE[event.op]]} {right}"
        squeeze = (
            f"{wide}.squeeze(-1)"
            if wide_t.shape[-1] == 1 and wide_t.dim() == narrow_t.dim() + 1
            else f"{wide}.view_as({narrow})"
        )
        doctor.add(
            self.kind,
            "error",
            f"{what} compares tensors of shapes {_fmt(a.shape)} and {_fmt(b.shape)}, which broadcast to "
            f"{_fmt(shape)}: every prediction is compared with every target ({math.prod(shape):,} terms instead of "
            f"{max(a.numel(), b.numel()):,}), so the loss trains the model towards the mean of the targets.",
            event.site,
            sorted(_params(doctor, event), key=lambda p: p.key),
            f"Make the shapes equal before the loss: {squeeze} (or {narrow}.view_as({wide})); a regression head with "
            f"out_features=1 gives (batch, 1).",
            step=event.step + 1,
            data={"shapes": [list(a.shape), list(b.shape)], "broadcast": list(shape), "op": event.op},
        )


_SYMBOL = {ast.Sub: "-", ast.Add: "+", ast.Mult: "*", ast.Div: "/"}


def _fmt(shape) -> str:
    dims = tuple(shape)
    return f"({dims[0]},)" if len(dims) == 1 else str(dims)


def _explicit(t: torch.Tensor, site: Site) -> bool:
    """Whether ``t``'s singleton axes were inserted on purpose: on this very line, or by a
    view / unsqueeze / expand of a tensor that requires grad (a model output reshaped for a
    pairwise computation). A target reshaped elsewhere (``y.view(-1, 1)`` at data loading)
    is not."""
    text = source_line(site.file, site.line)
    if any(token in text for token in _EXPLICIT_TEXT):
        return True
    fn = t.grad_fn
    return fn is not None and type(fn).__name__ in _SHAPED


def _operands(site: Site, op: str) -> tuple[str | None, str | None]:
    """The source text of the two operands (or the loss's first two arguments) at ``site``."""
    statement = statement_at(site)
    if statement is None:
        return None, None
    want = _ELEMENTWISE.get(op)
    for node in ast.walk(statement):
        if want is not None and isinstance(node, ast.BinOp) and isinstance(node.op, want):
            return ast.unparse(node.left), ast.unparse(node.right)
        if want is None and isinstance(node, ast.Call) and len(node.args) >= 2:
            return ast.unparse(node.args[0]), ast.unparse(node.args[1])
    return None, None


def _params(doctor, event: OpEvent) -> set:
    prov: set = set()
    for t in event.inputs:
        info = doctor.provenance.info(t)
        if info is not None:
            prov |= info.prov
    return prov
