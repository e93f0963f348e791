"""loss-input: a loss fed the wrong kind of input (probabilities into ``cross_entropy``,
a sigmoid's output into ``binary_cross_entropy_with_logits``, raw scores into
``nll_loss``, ...), decided from where the input came from, with the check shared with
``gw.per_sample`` (``gradwise._losses``). The finding keeps the sub-kind in
``data["subkind"]``."""

from __future__ import annotations

import functools

import torch.nn.functional as F

from gradwise._losses import CHECKED_LOSSES, REGRESSION_LOSSES, check_loss_input, loss_arguments
from gradwise.doctor._checks import Check
from gradwise.doctor._provenance import OpEvent

_OPTIONS = ("ignore_index", "label_smoothing")


class LossInput(Check):
    kind = "loss-input"
    order = 40
    ops = CHECKED_LOSSES

    def on_op(self, event: OpEvent) -> None:
        args, kwargs = event.args, event.kwargs
        inp, target = loss_arguments(args, kwargs)
        if inp is None:
            return
        if event.op in REGRESSION_LOSSES and not event.grad_enabled:
            return  # an evaluation metric (MAE of predicted classes, ...), not a training loss
        loss = getattr(F, event.op)
        options = {k: v for k, v in kwargs.items() if k in _OPTIONS}
        info = self.doctor.provenance.info(inp)
        problem = check_loss_input(
            functools.partial(loss, **options) if options else loss,
            inp,
            target,
            form=None if info is None else info.form,
        )
        if problem is None:
            return
        self.doctor.add(
            self.kind,
            problem.severity,
            problem.message,
            event.site,
            [] if info is None else info.prov,
            problem.fix,
            step=event.step + 1,
            data={"subkind": problem.kind, "loss": problem.loss},
        )
