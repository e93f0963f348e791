"""parameter-not-optimized: parameters that receive gradients but are in no optimizer, so
they never change.

Judged per model and per optimizer: a module's parameter is reported when other parameters
of the same model are in an optimizer (``Adam(model.encoder.parameters())`` leaving the
head out); a plain leaf tensor (a learned temperature) when it is used in two or more steps
together with optimized parameters, and its ``.grad`` is not read by the user's code (an
adversarial input or an interpolate for a gradient penalty are consumed, not optimized);
the parameters of a model re-created after the optimizer was built (a k-fold loop that
builds the optimizer once), when an optimizer steps with no gradient on any of its own
parameters; and a whole model in no optimizer (``Adam(discriminator.parameters())`` copied
for the generator, a learned loss weighting, a separate attention module) when its
parameters get gradients in two or more steps while it is in training mode and other
optimizers step. Not reported: a model in eval mode or under ``no_grad`` (a frozen teacher),
one whose output reaches losses only as their target (a teacher's logits in ``kl_div``, a
random target network's features in ``mse_loss``), a copy of an optimized model (a target
network made by ``deepcopy``: the same shapes), a model updated from other parameters (an
EMA) or whose ``.grad`` the user's code reads (a hand-written update). Points at the
construction of the optimizer that stepped after them (or that they belong in).
"""

from __future__ import annotations

from gradwise._losses import LOSS_MODULES, loss_arguments
from gradwise.doctor._checks import BackwardEvent, Check, StepEvent, nonzero_counts
from gradwise.doctor._provenance import OpEvent

_FIX = (
    "Build the optimizer from model.parameters() (or add the missing ones with optimizer.add_param_group); if they "
    "are meant to stay fixed, set requires_grad=False."
)


class ParameterNotOptimized(Check):
    kind = "parameter-not-optimized"
    order = 90
    ops = frozenset(LOSS_MODULES.values())  # which side of a loss a model's output is on

    def __init__(self, doctor):
        super().__init__(doctor)
        self.unoptimized: dict = {}  # param -> the optimizers of the parameters reached with it
        self.orphans: dict = {}  # param -> an optimizer that stepped without gradients while it had one
        self.steps_reached: dict = {}  # param -> number of watched backwards that reached it
        self._since_step: set = set()  # unoptimized params reached since the last optimizer step
        self.next_stepper: dict = {}  # param -> the first optimizer stepped after a backward reached it
        self.in_training: set = set()  # params reached while their model was in training mode
        self.as_input: set = set()  # params behind a loss's input
        self.as_target: set = set()  # params behind a loss's target

    def on_op(self, event: OpEvent) -> None:
        info = self.doctor.provenance.info
        inp, target = (info(t) for t in loss_arguments(event.args, event.kwargs))
        if inp is not None:
            self.as_input |= inp.prov
        if target is not None:
            self.as_target |= target.prov

    def after_backward(self, event: BackwardEvent) -> None:
        doctor = self.doctor
        optimized = doctor.optimized_now()
        outside = [p for p in event.reached - optimized if p not in doctor.grad_inputs]
        # a leaf made from tracked values (a requires_grad_() band-aid) is a result, not a parameter
        outside = [p for p in outside if p.model is not None or doctor.provenance.info(p.tensor()) is None]
        # judged now, while the models are alive (at the script's end they may be gone)
        outside = [p for p in outside if _has_gradient(p) and not doctor.is_buffer(p)]
        if not outside:
            return
        partners = self.doctor.optimizers_holding(event.reached & optimized)
        for p in outside:
            self.unoptimized.setdefault(p, [])
            for rec in partners:
                if rec not in self.unoptimized[p]:
                    self.unoptimized[p].append(rec)
            self.steps_reached[p] = self.steps_reached.get(p, 0) + 1
            self._since_step.add(p)
            model = doctor.model_of(p)
            module = None if model is None else doctor._root(model).module()
            if module is not None and module.training:
                self.in_training.add(p)

    def before_step(self, event: StepEvent) -> None:
        tensors = [p.tensor() for p in event.params]
        if self._since_step and all(t is None or t.grad is None for t in tensors):
            for p in self._since_step:
                self.orphans.setdefault(p, event.optimizer)
        for p in self._since_step:
            self.next_stepper.setdefault(p, event.optimizer)

    def after_step(self, event: StepEvent) -> None:
        self._since_step = set()

    def finish(self) -> None:
        doctor = self.doctor
        optimized = doctor.optimized_now() | doctor.ever_optimized
        by_optimizer: dict = {}
        for p, partners in self.unoptimized.items():
            if p in optimized or doctor.is_buffer(p):
                continue
            target = None
            model = doctor.model_of(p)
            if model is not None:
                siblings = [q for q in model.params if q in optimized]
                holders = doctor.optimizers_holding(siblings)
                target = holders[0] if holders else self.orphans.get(p)
                if target is None and not siblings and self._whole_model_left_out(p, model, optimized):
                    target = self.next_stepper.get(p)
            elif self.steps_reached.get(p, 0) < 2 or p in doctor.grad_read:
                continue  # a leaf made anew each step (an input), or one whose gradient the user consumes
            elif self.orphans.get(p) is not None:
                target = self.orphans[p]
            elif partners:
                target = partners[0]
            if target is not None:
                by_optimizer.setdefault(target, []).append(p)
        for rec, params in by_optimizer.items():
            self.doctor.add(
                self.kind,
                "error",
                "parameters receive gradients but belong to no optimizer's parameter groups, so they never change.",
                rec.where,
                params,
                _FIX,
            )

    def _whole_model_left_out(self, p, model, optimized) -> bool:
        """A model none of whose parameters is in an optimizer, trained as if it were one."""
        doctor = self.doctor
        if self.steps_reached.get(p, 0) < 2 or p not in self.in_training:
            return False
        if p in doctor.grad_read or p in doctor.provenance.copied:
            return False
        if p in self.as_target and p not in self.as_input:
            return False  # a teacher's or a target network's output, used as a loss's target
        shapes = sorted(q.shape for q in model.params)
        for other in doctor.models:
            if other is not model and other.params and any(q in optimized for q in other.params):
                if sorted(q.shape for q in other.params) == shapes:
                    return False  # a copy of an optimized model: a target network
        return True


def _has_gradient(p) -> bool:
    t = p.tensor()
    grad = None if t is None else t.grad
    return grad is not None and nonzero_counts([grad])[0] > 0
