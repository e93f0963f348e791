"""eval-mode: optimizer steps taken while the optimized model's Dropout or BatchNorm is in
eval mode.

After a validation pass that called ``model.eval()``, training goes on silently without
dropout, and BatchNorm normalises with (and no longer updates) its running statistics.
Judged at each watched ``optimizer.step()``: the models whose parameters it updates (with a
gradient) that contain mode-dependent modules (Dropout with ``p > 0``, BatchNorm and
InstanceNorm that track running statistics, ``nn.MultiheadAttention`` with dropout) in eval
mode, put there by an ``eval()`` / ``train(False)`` call on the model itself (or on a module
that contains them all). The line is that call. Not a finding: a frozen teacher or target
network that no optimizer steps; ``model.train()`` called again before the step; a model
without mode-dependent modules; BatchNorm layers put in eval mode one by one on purpose
(frozen statistics while fine-tuning), the model itself being in train mode.
"""

from __future__ import annotations

from torch import nn

from gradwise.doctor._checks import Check, StepEvent

_FIX = (
    "Call model.train() before the training steps (at the start of every epoch, after the validation that called "
    "model.eval()); keep model.eval() for evaluation only, under torch.no_grad()."
)


def _mode_dependent(module: nn.Module) -> bool:
    if isinstance(module, nn.modules.dropout._DropoutNd | nn.AlphaDropout):
        return module.p > 0
    if isinstance(module, nn.modules.batchnorm._NormBase):  # BatchNorm*, SyncBatchNorm, InstanceNorm*
        return bool(module.track_running_stats)
    if isinstance(module, nn.MultiheadAttention):
        return module.dropout > 0
    return False


class EvalMode(Check):
    kind = "eval-mode"
    order = 60
    numerics = True  # also judged in the numerics-only steps (a mistake at an epoch boundary)

    def before_step(self, event: StepEvent) -> None:
        doctor = self.doctor
        models = {}
        for p in event.params:
            t = p.tensor()
            model = doctor.model_of(p)
            if t is not None and t.grad is not None and model is not None:
                models[model.key] = model
        for model in models.values():
            root = model.module()
            if root is None:
                continue
            off = [(name, m) for name, m in _trained_mode_dependent(root) if not m.training]
            if not off:
                continue
            call = self._eval_call(root, [m for _, m in off])
            if call is None:
                continue
            site, where = call
            kinds = sorted({type(m).__name__ for _, m in off})
            doctor.add(
                self.kind,
                "warning",
                f"optimizer.step() runs while {len(off)} mode-dependent module(s) of the model ({', '.join(kinds)}) "
                f"are in eval mode, left there by {where}: {_effect(off)}, so the model trains differently from what "
                "was meant.",
                site,
                sorted(
                    {p for p in model.params if p.tensor() is not None and p.tensor().grad is not None},
                    key=lambda p: p.key,
                ),
                _FIX,
                step=event.step,
                data={
                    "modules": [name for name, _ in off],
                    "kinds": kinds,
                    "optimizer_step_line": getattr(event.site, "line", None),
                },
            )

    def _eval_call(self, root: nn.Module, off: list[nn.Module]):
        """The eval()/train(False) call on ``root``, if it is the last mode call that reached
        the modules in ``off``; None when they were put in eval one by one (frozen BatchNorm
        statistics on purpose) or before the watch began (the line is unknown)."""
        calls = self.doctor.mode_calls
        root_call = calls.get(root)
        if root_call is None or root_call[0] is not False:
            return None
        if all(calls.get(m) is not None and calls[m][2] <= root_call[2] for m in off):
            return root_call[1], "an eval() of the model"
        return None


def _effect(off) -> str:
    modules = [m for _, m in off]
    parts = []
    if any(isinstance(m, nn.modules.dropout._DropoutNd | nn.AlphaDropout | nn.MultiheadAttention) for m in modules):
        parts.append("dropout is off")
    if any(isinstance(m, nn.modules.batchnorm._NormBase) for m in modules):
        parts.append("normalisation uses (and no longer updates) its running statistics")
    return " and ".join(parts)


def _trained_mode_dependent(root: nn.Module) -> list:
    """The mode-dependent modules of ``root`` in a part that trains: the module that holds
    each (its parent) has a parameter with a gradient (a frozen backbone kept in eval mode
    for its statistics, under a trained head, is not counted)."""
    parents = {}
    for name, module in root.named_modules():
        for child_name, child in module.named_children():
            parents[id(child)] = (module, f"{name}.{child_name}" if name else child_name)
    found = []
    for name, module in root.named_modules():
        if not _mode_dependent(module):
            continue
        holder = parents.get(id(module), (root, name))[0]
        if any(p.grad is not None for p in holder.parameters()):
            found.append((name, module))
    return found
