"""vanishing-gradient: the first layers' gradients orders of magnitude below the last layers'.

Judged on the gradient of each layer relative to its weights, ``|g| / |w|`` (the size of
an SGD step relative to the weight, per unit learning rate), for the weight matrices of the
linear maps (``Linear``, convolutions, ``matmul`` with a parameter) in the order the forward
first uses them, as the median over the watched steps with finite gradients. Reported when
the first layer's figure is below ``RATIO`` (1e-3) times the median of the last half of
the layers', or below ``RATIO_LAST`` (1e-4) times the last layer's when the cause is seen
(saturated ``sigmoid``/``tanh`` or too small an init: a decay by a factor per layer reaches
into the last half too; a default-init deep ReLU stack decays about as much), with at
least ``MIN_LAYERS`` (4) such layers. A tiny learning rate does not do this (the gradients
themselves are compared), nor do frozen layers (not trained), nor a healthy deep network
with normalisation or residual connections (its ratio stays within one or two orders of
magnitude). The cause is read from the same step: stacked or saturated
``sigmoid``/``tanh``, or activations shrinking layer after layer (too small an init).
"""

from __future__ import annotations

import math
import statistics

from gradwise.doctor._checks import Check
from gradwise.doctor._trace import creation_site

RATIO = 1e-3
RATIO_LAST = 1e-4
MIN_LAYERS = 4


class VanishingGradient(Check):
    kind = "vanishing-gradient"
    order = 15
    numerics = True

    def finish(self) -> None:
        doctor = self.doctor
        if doctor.check("non-finite").found or doctor.check("exploding-gradient").found:
            return
        steps = [
            n
            for n in doctor.stats.history
            if not n.nonfinite and not n.scaled and n.gains and n.step < doctor.watched_steps
        ]
        if not steps:
            return
        last = steps[-1]
        by_model: dict = {}
        seen: set = set()
        for params, _, site in last.gains:
            weight = next((p for p in params if len(p.shape) >= 2), None)
            if weight is None or weight in seen or weight not in last.grad or not doctor.meant_to_train(weight):
                continue
            w = last.weight.get(weight, 0.0)
            if not w or w / math.sqrt(math.prod(weight.shape)) < 1e-6:
                continue  # zero-initialised (a residual branch's last layer): no scale to compare with
            seen.add(weight)
            by_model.setdefault(doctor.model_of(weight), []).append((weight, params, site))
        for layers in by_model.values():  # each model's chain of layers on its own (a GAN has two)
            if len(layers) >= MIN_LAYERS:
                self._judge(steps, last, layers)

    def _judge(self, steps, last, layers) -> None:
        doctor = self.doctor
        rel = {}
        for weight, _, _ in layers:
            values = [n.grad[weight] / n.weight[weight] for n in steps if weight in n.grad and n.weight.get(weight)]
            rel[weight] = statistics.median(values) if values else 0.0
        top = statistics.median(rel[w] for w, _, _ in layers[len(layers) // 2 :])
        final = rel[layers[-1][0]]
        first = rel[layers[0][0]]
        if top <= 0 or not math.isfinite(top) or not math.isfinite(final):
            return
        if first >= RATIO * top and first >= RATIO_LAST * final:
            return
        limit = RATIO
        if first >= RATIO * top:  # judged against the last layer: the decay reaches into the last half
            top, limit = final, RATIO_LAST
        cause, fix, key = self._cause(last, [w for w, _, _ in layers])
        if limit == RATIO_LAST and key not in ("saturated", "small-init"):
            return  # a default-init deep ReLU stack decays about this much too: only with a cause in sight
        starved = [(w, ps) for w, ps, _ in layers if rel[w] < limit * top]
        names = [p for _, ps in starved for p in ps]
        ratio = first / top
        self.doctor.add(
            self.kind,
            "warning",
            f"The gradient vanishes towards the input: the first layer's gradient, relative to its weights, is "
            f"{ratio:.1e} times the last layers' ({'median of the last half' if limit == RATIO else 'the last layer'}; "
            f"{len(starved)} of {len(layers)} layers below {limit:g} times); they barely train. Likely cause: {cause}.",
            self._site(layers[0]),
            names,
            fix,
            data={
                "ratio": ratio,
                "reference": "median of the last half" if limit == RATIO else "last layer",
                "relative_gradients": {doctor.name(w): rel[w] for w, _, _ in layers},
                "layers": len(layers),
                "cause": key,
            },
        )

    @staticmethod
    def _cause(numbers, weights) -> tuple[str, str, str]:
        """Saturated sigmoid/tanh, then weights too small to carry the signal back (a layer's
        backward gain, |W| / sqrt(fan_out), below 0.3), then stacked sigmoid/tanh."""
        saturating = numbers.saturation
        fix_act = (
            "Use ReLU/GELU between the layers, add normalisation (nn.LayerNorm / nn.BatchNorm1d) or residual "
            "connections, and a variance-preserving init (nn.init.kaiming_normal_ / xavier_normal_)."
        )
        mean = statistics.mean(f for _, _, f in saturating) if saturating else 0.0
        if mean > 0.5:
            return (
                f"saturated sigmoid/tanh pre-activations ({mean:.0%} of their outputs in the flat tails)",
                fix_act,
                "saturated",
            )
        gains = [numbers.weight[w] / math.sqrt(w.shape[0]) for w in weights if w in numbers.weight and w.shape[0]]
        if gains and statistics.median(gains) < 0.3:
            return (
                f"too small an init (each layer scales the backward signal by about {statistics.median(gains):.2f})",
                (
                    "Initialise for the depth: nn.init.xavier_normal_ (tanh/sigmoid) or kaiming_normal_ (ReLU) instead "
                    "of a tiny std; add normalisation or residual connections."
                ),
                "small-init",
            )
        if len(saturating) >= 2:
            return (
                f"{len(saturating)} stacked sigmoid/tanh activations (each scales the gradient by <= 1)",
                fix_act,
                "stacked",
            )
        return "a deep stack without normalisation or residual connections", fix_act, "deep-stack"

    def _site(self, layer):
        """The first layer's construction line, else the line of its first use."""
        weight, _, site = layer
        if weight.made_at is not None:
            return weight.made_at
        model = self.doctor.model_of(weight)
        root = None if model is None else model.module()
        found = None if root is None or not weight.qualname else creation_site(root, weight.qualname)
        return found or site
