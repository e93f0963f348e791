"""exploding-gradient: gradients that blow up, from the weights' scale or from the step size.

Judged on the numbers of the watched steps (``gradwise.doctor._stats``), per training
stream (the steps whose backward reached the same parameters: a GAN's two losses, or the
folds of a k-fold loop, are judged apart), never on scaled (``GradScaler``) steps:

- **from the init**, at the stream's first step: the activations grow by a factor per layer
  (the RMS of the outputs of consecutive linear maps, or of a recurrent layer's hidden state
  from the first time step to the last, grows by at least ``CHAIN`` (100x) overall, by at
  least ``LAYER`` (1.5x) at every layer of the run) and the gradients of those layers are
  more than ``RELATIVE`` (10) times their weights (one SGD step at lr 0.1 would be larger
  than the weight). The line is the one that set those weights: the user's ``nn.init.*`` call
  or in-place scaling, else the layer's construction. Not reported when the gradients are
  clipped and the loss does not rise (a large but handled norm).
- **from the step size**, over the steps: the gradient norm rises at least ``RISE`` (10x)
  from the first step to its peak, rising at most steps up to it, while the loss rises (or turns non-finite), and the
  optimizer's updates reach ``UPDATE`` (0.3) times the weights' norm; or one update larger
  than the weights is followed by a non-finite loss or gradient. The line is the optimizer's
  construction, where the learning rate is set. A large loss in steady descent has neither a
  rising loss nor rising gradients. When those steps killed most units of a ReLU and nothing
  turned non-finite, ``dead-units`` reports it instead (its fix is the same learning rate).

When an explosion precedes the watch's first non-finite value, it is the cause: the
``non-finite`` finding is taken back and said in this one.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter

from gradwise.doctor._checks import Check
from gradwise.doctor._stats import total_norm
from gradwise.doctor._trace import creation_site

CHAIN = 1e2
LAYER = 1.5
RELATIVE = 10.0
RISE = 10.0
UPDATE = 0.3

_FIX_INIT = (
    "Initialise for the depth: nn.init.kaiming_normal_(w, nonlinearity='relu') (std sqrt(2 / fan_in)) or "
    "xavier_normal_ for tanh, or keep the layers' default init; do not scale the weights up. Add normalisation "
    "(nn.LayerNorm / BatchNorm) and clip gradients (torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))."
)
_FIX_RNN = (
    "Keep the recurrent matrix's gain at or below 1 (nn.init.orthogonal_(weight_hh, gain=1.0), or the default init), "
    "use an LSTM/GRU, and clip gradients (torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))."
)
_FIX_STEP = (
    "Lower the learning rate (by 10x to start with), add a warm-up (torch.optim.lr_scheduler.LinearLR), standardise "
    "the inputs and targets, or clip gradients (torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)); Adam is "
    "less sensitive to the gradients' scale than SGD."
)


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


class ExplodingGradient(Check):
    kind = "exploding-gradient"
    order = 13
    numerics = True

    def __init__(self, doctor):
        super().__init__(doctor)
        self.found = False

    def finish(self) -> None:
        doctor = self.doctor
        history = [n for n in doctor.stats.history if not n.scaled]
        if not history:
            return
        updates = doctor.stats.read_updates()
        streams: dict = {}
        for n in history:
            streams.setdefault(frozenset(n.grad), []).append(n)
        nonfinite = doctor.check("non-finite")
        for params, steps in streams.items():
            if not params:
                continue
            mine = [u for u in updates if params.intersection(u.params)]
            judged = self._from_init(steps, mine) or self._from_step(steps, mine)
            if judged is None:
                continue
            message, site, names, fix, data = judged
            start = data["step"] - 1
            if nonfinite.found and nonfinite.step is not None and nonfinite.step >= start and not nonfinite.in_data:
                taken = doctor.withdraw("non-finite")
                if taken:
                    then = taken[0]
                    where = f" (line {then.line})" if then.line is not None else ""
                    message += f" At step {then.step} it turned non-finite{where}: {then.message}"
                    data["then_non_finite"] = {"step": then.step, "line": then.line, **then.data}
            self.found = True
            doctor.add(self.kind, "error", message, site, names, fix, step=data["step"], data=data)

    # --- from the init ----------------------------------------------------------------------

    def _from_init(self, steps, updates):
        doctor = self.doctor
        first = steps[0]
        if self._clipped(steps, updates) and not self._loss_rises(steps):
            return None
        rel = {p: first.grad[p] / first.weight[p] for p in first.grad if first.weight.get(p)}

        def large(p) -> bool:
            r = rel.get(p)
            return r is not None and (r > RELATIVE or math.isnan(r))

        # recurrent layers whose hidden state grows over time
        for params, growth in first.rnn_growth:
            hh = [p for p in params if p.qualname and "weight_hh" in p.qualname] or [p for p in params if p.shape[1:]]
            if (growth >= CHAIN or math.isinf(growth)) and any(large(p) for p in hh) and hh[0] in first.grad:
                return self._report_init(first, hh[:1], list(params), growth, 1, rel, rnn=True)
        # chains of layers: distinct weights in the order of first use (per model), and repeated uses of one weight
        chains: dict = {}
        repeated: dict = {}
        seen: set = set()
        for params, rms, use in first.gains:
            weight = next((p for p in params if len(p.shape) >= 2), None)
            if weight is None or weight not in first.grad or not doctor.meant_to_train(weight):
                continue
            repeated.setdefault(weight, []).append((rms, use))
            if weight not in seen:
                seen.add(weight)
                chains.setdefault(doctor.model_of(weight), []).append((weight, params, rms, use))
        candidates = [layers for layers in chains.values() if len(layers) >= 3]
        for weight, values in repeated.items():
            if len(values) >= 3:
                candidates.append([(weight, (weight,), v, use) for v, use in values])
        for layers in candidates:
            run = self._growing_run([rms for _, _, rms, _ in layers])
            if run is None:
                continue
            i, j, growth = run  # layers[i] .. layers[j]: each output larger than the one before
            grown = list(dict.fromkeys(w for w, _, _, _ in layers[i + 1 : j + 1]))
            if not any(large(w) for w in grown):
                continue
            names = list(dict.fromkeys(p for _, ps, _, _ in layers[i + 1 : j + 1] for p in ps))
            return self._report_init(first, grown, names, growth, j - i, rel, used=layers[i + 1][3])
        return None

    @staticmethod
    def _growing_run(rms: list[float]):
        """The longest run of consecutive outputs each at least LAYER times the one before
        (an overflow to Inf counts as growth), if it grows at least CHAIN overall."""
        best = None
        i = 0
        while i < len(rms) - 1:
            if not _finite(rms[i]) or rms[i] <= 0:  # a zero start (an RNN's initial state) has no scale
                i += 1
                continue
            j = i
            while j + 1 < len(rms) and (
                math.isinf(rms[j + 1]) or (_finite(rms[j + 1]) and rms[j + 1] >= LAYER * rms[j])
            ):
                j += 1
                if math.isinf(rms[j]):
                    break
            if j - i >= 2 or (j - i >= 1 and math.isinf(rms[j])):
                growth = rms[j] / rms[i]
                if growth >= CHAIN and (best is None or j - i > best[1] - best[0]):
                    best = (i, j, growth)
            i = max(j, i + 1)
        return best

    def _report_init(self, first, grown, names, growth, layers, rel, rnn=False, used=None):
        doctor = self.doctor
        sites = Counter(doctor.stats.init_sites[w] for w in grown if w in doctor.stats.init_sites)
        made = None if sites else self._made(grown[0])
        site = sites.most_common(1)[0][0] if sites else (made or used)
        per = growth ** (1 / layers) if layers and math.isfinite(growth) else math.inf
        worst = max((rel[w] for w in grown if w in rel), key=lambda v: (math.isnan(v), v), default=math.nan)
        total = total_norm(first.grad.values())
        if rnn:
            what = (
                f"the recurrent layer's hidden state grows {growth:.3g}x from the first time step to the last, and "
                f"its recurrent weights' gradient is {worst:.3g} times their norm"
            )
        else:
            what = (
                f"the activations grow {growth:.3g}x over {layers} layers (about {per:.3g}x per layer), and the "
                f"gradients of those layers reach {worst:.3g} times their weights' norm"
            )
        where = "set here" if sites else ("made here (their init)" if made else "first used here")
        message = (
            f"The gradients explode from the start because of the weights' scale, {where}: at the first step {what} "
            f"(total gradient norm {total:.3g})."
        )
        data = {
            "cause": "init",
            "step": first.step + 1,
            "activation_growth": growth,
            "per_layer": per,
            "layers": layers,
            "relative_gradient": worst,
            "grad_norm": total,
            "recurrent": rnn,
        }
        return message, site, names, _FIX_RNN if rnn else _FIX_INIT, data

    def _made(self, weight):
        if weight.made_at is not None:
            return weight.made_at
        model = self.doctor.model_of(weight)
        root = None if model is None else model.module()
        return None if root is None or not weight.qualname else creation_site(root, weight.qualname)

    # --- from the step size -------------------------------------------------------------------

    def _from_step(self, steps, updates):
        if len(steps) < 2 or not updates:
            return None
        if any(f.kind == "missing-zero-grad" for f in self.doctor.findings):
            return None  # gradients accumulated across steps grow step over step: that finding's cause
        norms = [total_norm(n.grad.values()) for n in steps]
        losses = [n.loss for n in steps]
        finite = [k for k, g in enumerate(norms) if _finite(g) and _finite(losses[k])]
        if not finite or finite[0] != 0:
            return None  # non-finite from the first step: not a divergence over steps
        last = finite[-1]
        turned = last < len(steps) - 1  # the loss or the gradient turned non-finite after it
        until = steps[min(last + 1, len(steps) - 1)].step  # the updates before the last step judged
        ratios = [self._update_ratio(u) for u in updates if u.step <= until]
        biggest = max((r for r in ratios if r is not None), default=0.0, key=lambda r: r[0])
        if not biggest:
            return None
        g = [norms[k] for k in finite]
        peak = max(range(len(g)), key=g.__getitem__)
        rises = sum(b > a for a, b in itertools.pairwise(g[: peak + 1]))
        diverging = (
            len(g) >= 3
            and peak >= 1
            and g[peak] >= RISE * g[0]
            and rises >= (2 * peak + 2) // 3  # rising step over step up to its peak
            and (turned or self._loss_rises([steps[k] for k in finite]))
            and biggest[0] >= UPDATE
        )
        # one update larger than the weights, right before the step that turned non-finite
        just_before = [r for u, r in zip(updates, map(self._update_ratio, updates), strict=True) if u.step == until]
        blown = turned and any(r is not None and r[0] >= 1.0 for r in just_before) and g[-1] >= g[0]
        if not (diverging or blown):
            return None
        if not turned and any(cause == "update" for _, cause, *_ in self.doctor.check("dead-units").dead()):
            return None  # the large steps killed ReLU units, which the finite loss then reflects: dead-units says it
        optimizer = biggest[2].optimizer
        opt = optimizer.optimizer()
        lrs = sorted({group.get("lr") for group in getattr(opt, "param_groups", ())} - {None}, key=float)
        lr = ", ".join(f"{float(v):g}" for v in lrs) if lrs else "unknown"
        ratio, param = biggest[0], biggest[1]
        loss_words = (
            f"the loss rose from {losses[0]:.4g} to {max(losses[k] for k in finite):.4g}"
            + (" and then to a non-finite value" if turned else "")
            if last > 0
            else "the loss turned non-finite at the next step"
        )
        message = (
            f"The gradients explode because the steps are too large (lr={lr}): over {len(steps)} steps the gradient "
            f"norm went from {g[0]:.3g} to {g[peak]:.3g}" + (" and then to Inf/NaN" if turned else "") + f", "
            f"{loss_words}, and the optimizer's update reached {ratio:.3g} times the weights' norm "
            f"({self.doctor.name(param)})."
        )
        data = {
            "cause": "step-size",
            "step": 1,
            "lr": [float(v) for v in lrs],
            "grad_norms": norms,
            "losses": losses,
            "max_update_ratio": ratio,
            "update_ratios": [r[0] for r in ratios if r is not None],
        }
        names = sorted({p for u in updates for p in u.params}, key=lambda p: p.key)
        return message, optimizer.where, names, _FIX_STEP, data

    @staticmethod
    def _update_ratio(update):
        """The largest update / weight ratio of a step (over parameters whose weights are not 0)."""
        best = None
        for p, (delta, weight) in zip(update.params, update.values, strict=True):
            if weight > 0 and math.isfinite(weight) and len(p.shape) >= 2:
                r = delta / weight
                r = math.inf if math.isnan(r) else r
                if best is None or r > best[0]:
                    best = (r, p, update)
        return best

    @staticmethod
    def _loss_rises(steps) -> bool:
        """Whether the loss rose across the steps (ended at least 2x larger in size, or non-finite)."""
        losses = [n.loss for n in steps if n.loss is not None]
        if len(losses) < 2:
            return False
        if not _finite(losses[-1]):
            return True
        a, b = losses[0], losses[-1]
        return (
            b > a
            and abs(b) >= 2 * abs(a)
            and sum(y > x for x, y in itertools.pairwise(losses)) >= (len(losses) - 1) / 2
        )

    @staticmethod
    def _clipped(steps, updates) -> bool:
        """Whether the gradients were changed in place between a backward and the step
        (``clip_grad_norm_``), at some step of the stream."""
        return any(u.grads_changed for u in updates)
