"""dead-units: a ReLU-family activation most of whose units are zero for every sample.

A ReLU unit whose pre-activation is negative for every sample outputs 0 and passes no
gradient, so the layer feeding it never moves it back: it is dead for good. Judged over the
watched steps from the activations' on-device masks (``gradwise.doctor._stats``): a unit is
dead when no sample of the first step and of the last two watched steps made it positive
(cause: the initialisation, e.g. a negative bias), or, alive at the first step, none of
the last two (cause: a huge update). Reported
when dead units are the great majority of the activation (more than 80%; the usual 10-40%
of inactive ReLU units is healthy, and a layer fed few distinct inputs, such as VQ codes,
can leave half its units idle), of at least 8 units, over at least 2 watched steps, in a
layer that trains, and never after a non-finite value (NaN is not > 0). GELU, LeakyReLU,
ELU and SiLU cannot die and are not looked at.
"""

from __future__ import annotations

from gradwise.doctor._checks import Check

DEAD_FRACTION = 0.8
MIN_UNITS = 8


class DeadUnits(Check):
    kind = "dead-units"
    order = 16
    numerics = True

    def __init__(self, doctor):
        super().__init__(doctor)
        self._dead: list | None = None

    def finish(self) -> None:
        doctor = self.doctor
        if doctor.check("non-finite").found or doctor.check("exploding-gradient").found:
            return  # NaN activations are not > 0: every unit would look dead; an explosion says it all
        for act, cause, dead, units, mask in self.dead():
            self._report(act, cause, dead, units, mask)

    def dead(self) -> list[tuple]:
        """The activations whose units are mostly dead: ``(record, cause, dead, units, mask)``,
        cause ``"init"`` or ``"update"`` (computed once)."""
        if self._dead is not None:
            return self._dead
        doctor = self.doctor
        self._dead = found = []
        for act in doctor.stats.activations.values():
            if act.first is None or not act.recent or act.first.numel() < MIN_UNITS:
                continue
            trained = [p for p in act.layer if p in doctor.reached and doctor.meant_to_train(p)]
            if not trained:
                continue
            first = act.first.cpu()
            recent = act.recent[0].cpu()
            for mask in act.recent[1:]:
                recent = recent | mask.cpu()
            units = first.numel()
            dead_recent = ~recent
            dead_always = dead_recent & ~first
            if int(dead_always.sum()) / units > DEAD_FRACTION:
                found.append((act, "init", int(dead_always.sum()), units, dead_always))
            elif act.later_steps >= 2 and int(dead_recent.sum()) / units > DEAD_FRACTION:
                found.append((act, "update", int(dead_recent.sum()), units, dead_recent))
        return found

    def _report(self, act, cause: str, dead: int, units: int, dead_mask) -> None:
        doctor = self.doctor
        names = ", ".join(doctor.name(p) for p in act.layer)
        data = {"dead": dead, "units": units, "fraction": round(dead / units, 4), "cause": cause}
        bias = next((p for p in act.layer if p.tensor() is not None and p.tensor().dim() == 1), None)
        detail = ""
        if cause == "init":
            if bias is not None and bias.tensor().numel() == units:
                b = bias.tensor().detach().cpu()
                negative = int((b[dead_mask] < 0).sum())
                data["negative_bias"] = negative
                if negative > dead / 2:
                    init = doctor.stats.init_sites.get(bias)
                    where = f" (set at line {init.line})" if init is not None else ""
                    detail = f" {negative} of them have a negative bias{where}, which keeps them below 0."
            what = "for every sample, from the first watched step to the last"
            fix = (
                "Initialise so that units start active: a zero or small positive bias (nn.init.zeros_(layer.bias)), "
                "He/Kaiming init for ReLU (nn.init.kaiming_normal_(w, nonlinearity='relu')), normalised inputs; or use "
                "nn.LeakyReLU / nn.GELU, which cannot die."
            )
        else:
            what = "for every sample in the last watched steps (they were alive at the first)"
            fix = (
                "Lower the learning rate (or warm it up) and clip gradients (torch.nn.utils.clip_grad_norm_): one "
                "huge update pushed the pre-activations below 0 for good; nn.LeakyReLU / nn.GELU cannot die."
            )
        message = (
            f"{dead} of the {units} units of this ReLU ({dead / units:.0%}) are 0 {what}: they pass no gradient, so "
            f"the layer feeding them ({names}) cannot bring them back.{detail}"
        )
        doctor.add(self.kind, "warning", message, self._site(act), act.layer, fix, data=data)

    @staticmethod
    def _site(act):
        """The activation module's construction line, else the line that called it."""
        return act.made or act.site
