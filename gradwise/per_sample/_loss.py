"""One loss per sample from the user's ordinary loss, and the checks shared by the public functions."""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gradwise import _validate as v
from gradwise._frames import user_stacklevel
from gradwise._losses import check_loss_input, loss_name, loss_option
from gradwise.errors import ArgumentError, ArgumentTypeError, GradwiseWarning, UnsupportedError

_CLASS_LOSSES = ("cross_entropy", "nll_loss")


def unwrap(model: Any) -> nn.Module:
    """The plain module inside ``torch.compile`` and DDP wrappers (hooks and torch.func need it)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def check_arguments(api: str, model: Any, loss_fn: Any, inputs: Any, targets: Any) -> tuple[nn.Module, int]:
    """Validate the common arguments; return the unwrapped model and the batch size."""
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"{api}: model must be a torch.nn.Module (got {type(model).__name__})")
    if not callable(loss_fn):
        raise ArgumentTypeError(
            f"{api}: loss_fn must be callable as loss_fn(output, target) (got {type(loss_fn).__name__}: "
            f"{v.describe(loss_fn)})"
        )
    for name, value in (("inputs", inputs), ("targets", targets)):
        if not isinstance(value, torch.Tensor):
            raise ArgumentTypeError(f"{api}: {name} must be a torch.Tensor (got {type(value).__name__})")
        if value.dim() == 0:
            raise ArgumentError(f"{api}: {name} must have a batch dimension first (got a 0-d tensor)")
    if inputs.shape[0] != targets.shape[0]:
        raise ArgumentError(
            f"{api}: inputs and targets must have the same batch size (dimension 0)\n"
            f"  inputs:  {tuple(inputs.shape)}\n"
            f"  targets: {tuple(targets.shape)}"
        )
    if inputs.shape[0] == 0:
        raise ArgumentError(
            f"{api}: the batch is empty (inputs of shape {tuple(inputs.shape)}); pass at least one sample"
        )
    module = unwrap(model)
    if not any(p.requires_grad for p in module.parameters()):
        raise ArgumentError(
            f"{api}: model has no trainable parameters (none with requires_grad=True), so there is no gradient "
            "to compute"
        )
    for name, sub in module.named_modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and (sub.training or sub.running_mean is None):
            raise UnsupportedError(
                f"{api}: {name or 'model'} ({type(sub).__name__}) normalises with the statistics of the whole batch, "
                "which mixes the samples, so a sample's gradient is not its own. Put the BatchNorm layers in eval "
                "mode (module.eval(), with running statistics) or use GroupNorm / LayerNorm instead."
            )
    return module, inputs.shape[0]


def trainable(module: nn.Module) -> dict[str, nn.Parameter]:
    """Trainable parameters by name; a tied parameter appears once, under its first name."""
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def _call_unreduced(loss_fn: Any, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, str]:
    """Call a known loss with ``reduction='none'``; return the result and the user's reduction."""
    if isinstance(loss_fn, nn.Module):
        reduction = loss_fn.reduction
        unreduced = copy.copy(loss_fn)  # shares the weight; the user's module is left alone
        unreduced.reduction = "none"
        return unreduced(output, target), reduction
    keywords: dict[str, Any] = {}
    inner = loss_fn
    while isinstance(inner, functools.partial):
        keywords = {**inner.keywords, **keywords}
        inner = inner.func
    return loss_fn(output, target, reduction="none"), keywords.get("reduction", "mean")


def per_sample_losses(api: str, loss_fn: Callable[..., Any], output: Any, target: torch.Tensor) -> torch.Tensor:
    """``(B,)``: each sample's loss as ``loss_fn`` would compute it on that sample alone.

    A known loss (``torch.nn.functional`` loss, a partial of one, an ``nn`` loss module) is
    called with ``reduction='none'`` and each sample's values are reduced the way the user's
    reduction reduces a batch of one: ``"mean"`` (weighted by ``weight[target]`` and without
    ``ignore_index`` entries for cross_entropy / nll_loss), ``"sum"``, ``"batchmean"``. A
    sample whose every target is ignored gets loss 0 (alone, PyTorch would return NaN).
    Any other callable must already return one value per sample, shape ``(B,)``.
    """
    if not isinstance(output, torch.Tensor):
        raise ArgumentTypeError(
            f"{api}: the model must return one tensor with the batch first (got {type(output).__name__}); "
            "wrap the model so that it returns the tensor the loss receives"
        )
    batch = target.shape[0]
    name = loss_name(loss_fn)
    if name is None:
        losses = loss_fn(output, target)
        if not isinstance(losses, torch.Tensor) or losses.shape != (batch,):
            got = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
            raise ArgumentError(
                f"{api}: loss_fn must return one loss per sample, shape ({batch},), for a batch of {batch} "
                f"(got {got}).\nPass a torch loss itself (F.cross_entropy, nn.CrossEntropyLoss(), ...), whose "
                "reduction gradwise handles, or a callable that does not reduce over the batch, e.g. "
                "lambda out, y: F.cross_entropy(out, y, reduction='none')"
            )
        return losses
    unreduced, reduction = _call_unreduced(loss_fn, output, target)
    if not isinstance(unreduced, torch.Tensor) or unreduced.dim() == 0 or unreduced.shape[0] != batch:
        got = tuple(unreduced.shape) if isinstance(unreduced, torch.Tensor) else type(unreduced).__name__
        raise ArgumentError(
            f"{api}: loss_fn called with reduction='none' must return one value per sample or per element, with "
            f"the batch ({batch}) first (got {got}); is the model's output batch-first?"
        )
    flat = unreduced.reshape(batch, -1)
    if reduction in ("sum", "batchmean"):
        return flat.sum(1)
    if reduction == "none":
        if unreduced.dim() != 1:
            raise ArgumentError(
                f"{api}: loss_fn has reduction='none' and returns shape {tuple(unreduced.shape)}, not one value per "
                f"sample ({batch},); pass the loss with reduction='mean' or 'sum' and gradwise reduces each sample"
            )
        return unreduced
    if name in _CLASS_LOSSES and not target.is_floating_point():
        ignore = loss_option(loss_fn, "ignore_index", -100)
        weight = loss_option(loss_fn, "weight", None)
        t = target.reshape(batch, -1)
        kept = t != ignore
        if weight is not None:
            counts = (weight[t.clamp(0, weight.shape[0] - 1)] * kept).to(flat.dtype)
        else:
            counts = kept.to(flat.dtype)
        denominator = counts.sum(1)
        return torch.where(denominator > 0, flat.sum(1) / denominator.clamp_min(1e-30), torch.zeros_like(denominator))
    return flat.mean(1)


def checked_loss_input(
    api: str, loss_fn: Any, output: torch.Tensor, target: torch.Tensor, check_loss: bool, form: str | None = None
) -> None:
    """Raise when the loss receives the wrong kind of input, warn when it receives a redundant
    or suspicious one (see ``gradwise._losses``; ``form`` says where ``output`` came from)."""
    if not check_loss:
        return
    problem = check_loss_input(loss_fn, output, target, form=form)
    if problem is None:
        return
    if problem.severity == "error":
        raise ArgumentError(
            f"{api}: the loss receives the wrong kind of input [{problem.kind}]\n  {problem.message}\n"
            f"  Fix: {problem.fix}\nIf the input is right after all, pass check_loss=False."
        )
    warnings.warn(
        f"{api}: [{problem.kind}] {problem.message} Fix: {problem.fix} (check_loss=False silences this)",
        GradwiseWarning,
        stacklevel=user_stacklevel(),
    )
