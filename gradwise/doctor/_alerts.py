"""The monitor's alerts: the doctor's numerics kinds, judged step by step over a long run.

Each kind is raised once, at the recorded step where it first appears, and judged so that a
healthy run raises nothing (a false alarm on clean code is worse than a miss):

- ``non-finite`` (error): a gradient element or the loss is NaN/Inf. The doctor's recorder
  is then armed (:class:`Locator`) for the next step, whose ``non-finite`` finding names
  the operation and the line; the alert keeps the step where the value appeared. Nothing
  else is judged after it (a NaN makes every other figure meaningless).
- ``exploding-gradient`` (error): the total gradient norm jumps above ``SPIKE`` (100) times
  its median over the last ``WINDOW`` (64) recorded steps of the same optimizer (at least
  ``MIN_HISTORY`` (8) of them), or an update is larger than its weight (``update_ratio`` >= 1 for a weight
  matrix) in ``SUSTAIN_UPDATE`` (3) consecutive recorded steps.
- ``vanishing-gradient`` (warning): over ``SUSTAIN`` (10) consecutive recorded steps, the
  first weight matrix's ``grad_norm / param_norm`` is below ``RATIO`` (1e-3) times the
  median of the last half of the weight matrices' (at least ``MIN_LAYERS`` (4); embedding
  tables, frozen and zero weights are left out), as the doctor judges a watch.
- ``dead-units`` (warning): a ReLU or ReLU6 module whose units were <= 0 for every sample
  of the last ``_WINDOW`` (5) recorded batches make at least ``DEAD_FRACTION`` (80%) of
  its units (at least 8). LeakyReLU, GELU and the like cannot die and are not judged.
"""

from __future__ import annotations

import contextlib
import math
import statistics
from collections import deque
from typing import TYPE_CHECKING, Any

import torch

from gradwise.doctor._findings import Finding
from gradwise.doctor._trace import user_site

if TYPE_CHECKING:
    from gradwise.doctor._monitor import GradientMonitor, _Pending

SPIKE = 100.0
WINDOW = 64
MIN_HISTORY = 8
SUSTAIN_UPDATE = 3
RATIO = 1e-3
SUSTAIN = 10
MIN_LAYERS = 4
DEAD_FRACTION = 0.8
MIN_UNITS = 8
LOCATE_STEPS = 3  # steps the recorder stays armed waiting for the non-finite value to recur

_FIX_SPIKE = (
    "Clip gradients (torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)), lower the learning rate or add a "
    "warm-up (torch.optim.lr_scheduler.LinearLR); look at the batch of this step (an outlier, a bad label)."
)
_FIX_UPDATE = (
    "The optimizer's steps are as large as the weights: lower the learning rate (by 10x to start with), add a warm-up, "
    "or clip gradients."
)
_FIX_VANISH = (
    "Use ReLU/GELU instead of stacked sigmoid/tanh, initialise for the depth (nn.init.kaiming_normal_), add "
    "normalisation (nn.LayerNorm / BatchNorm) or residual connections."
)
_FIX_DEAD = (
    "Lower the learning rate, initialise biases at 0 or slightly positive, or use nn.LeakyReLU / nn.GELU, which "
    "cannot die; normalise the layer's input (BatchNorm/LayerNorm before the ReLU)."
)


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


class Judge:
    """The alerts of one monitor, judged at each record."""

    def __init__(self, mon: GradientMonitor):
        self.mon = mon
        self.raised: set[tuple] = set()
        self.totals: dict[str, deque[float]] = {}  # per optimizer: a GAN's two losses have their own scales
        self.large_updates: dict[str, int] = {}
        self.vanishing = 0
        self.stopped = False  # after a non-finite value

    def judge(self, record: dict, windows: dict, pending: _Pending) -> list[Finding]:
        if self.stopped:
            return []
        out: list[Finding] = []
        bad = {n: v["nonfinite"] for n, v in record["params"].items() if v["nonfinite"]}
        loss = record["loss"]
        if bad or (loss is not None and not math.isfinite(loss)) or not _finite_or_none(record["grad_norm_total"]):
            self.stopped = True
            self._nonfinite(record, bad, pending)
            return out
        out += self._exploding(record)
        out += self._vanishing(record)
        out += self._dead(record, windows)
        return out

    # --- non-finite ------------------------------------------------------------------------

    def _nonfinite(self, record: dict, bad: dict, pending: _Pending) -> None:
        step = record["step"]
        params = record["params"]
        loss = record["loss"]
        total = sum(bad.values())
        first = next(iter(bad), None)
        parts = []
        if bad:
            shown = ", ".join(f"{n} ({c} element{'s' if c != 1 else ''})" for n, c in list(bad.items())[:3])
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            parts.append(
                f"the gradients of {len(bad)} of {len(params)} parameters hold NaN/Inf ({total} elements: "
                f"{shown}{more})"
            )
        if loss is None:
            parts.append("the loss was not seen")
        elif math.isfinite(loss) and self.mon._ddp:
            parts.append(f"this rank's loss was finite ({loss:.4g})")
        elif math.isfinite(loss):
            parts.append(f"the loss was finite ({loss:.4g}), so the non-finite value was born in the backward")
        else:
            parts.append(f"the loss was {loss}")
        message = f"At step {step} " + "; ".join(parts) + "."
        rank = self._first_rank(loss, bool(bad))
        data: dict[str, Any] = {"nonfinite": bad, "loss": loss, "first_parameter": first}
        if rank is not None:
            data["rank"] = rank
            message += f" It appeared first on rank {rank}" + (
                " (this rank)." if rank == self.mon._rank else ", whose gradients the all-reduce averaged into these."
            )
        finding = Finding(
            "non-finite",
            "error",
            message,
            None,
            None,
            tuple(bad),
            "",
            step,
            data,
        )
        mon = self.mon
        before = {}
        if pending.optimizer.buffer and len(pending.optimizer.buffer) == len(pending.tensors):
            before = {id(p): b for p, b in zip(pending.tensors, pending.optimizer.buffer, strict=True)}
        poisoned = any(not _finite(v["update_ratio"]) for v in params.values())
        Locator(mon, finding, list(mon.model_calls), before, poisoned).start()

    def _first_rank(self, loss: float | None, gradients: bool) -> int | None:
        """Under DDP, the lowest rank whose own loss was not finite. Only non-finite
        gradients (averaged: the same on every rank, which all get here at the same step)
        call for a collective; a rank whose own loss alone is not finite names itself."""
        mon = self.mon
        if not mon._ddp:
            return None
        import torch.distributed as dist

        finite = loss is not None and math.isfinite(loss)
        if not gradients:
            return None if finite else mon._rank
        known = list(mon._known.values())
        device = known[0].device if known else torch.device("cpu")
        if dist.get_backend() == "gloo":
            device = torch.device("cpu")
        flag = torch.tensor([0.0 if finite else 1.0], device=device)
        flags = [torch.zeros_like(flag) for _ in range(dist.get_world_size())]
        dist.all_gather(flags, flag)
        bad = [r for r, f in enumerate(flags) if float(f) > 0]
        return bad[0] if bad else None

    # --- exploding -------------------------------------------------------------------------

    def _exploding(self, record: dict) -> list[Finding]:
        out = []
        total = record["grad_norm_total"]
        step = record["step"]
        window = self.totals.setdefault(record["optimizer"], deque(maxlen=WINDOW))
        history = list(window)
        if _finite(total):
            window.append(total)
        if "exploding-gradient" in {k for k, *_ in self.raised}:
            return out
        if len(history) >= MIN_HISTORY and _finite(total):
            median = statistics.median(history)
            if median > 0 and total > SPIKE * median:
                out.append(
                    self._finding(
                        "exploding-gradient",
                        "error",
                        (
                            f"At step {step} the total gradient norm jumped to {total:.3g}, {total / median:.3g} times "
                            f"its median over the last {len(history)} recorded steps ({median:.3g})."
                        ),
                        self._largest(record),
                        _FIX_SPIKE,
                        step,
                        {"subkind": "spike", "grad_norm_total": total, "median": median},
                    )
                )
                return out
        mon = self.mon
        large = []
        for name, v in record["params"].items():
            r, w = v["update_ratio"], v["param_norm"]
            if mon.ndim.get(name, 0) >= 2 and _finite(r) and _finite(w) and w > 0 and r >= 1.0:
                self.large_updates[name] = self.large_updates.get(name, 0) + 1
                if self.large_updates[name] >= SUSTAIN_UPDATE:
                    large.append((r, name))
            else:
                self.large_updates.pop(name, None)
        if large:
            r, name = max(large)
            out.append(
                self._finding(
                    "exploding-gradient",
                    "error",
                    (
                        f"From step {step - (SUSTAIN_UPDATE - 1) * mon.every} to {step} the optimizer "
                        f"({record['optimizer']}) "
                        f"changed {name} by more than its own norm at every recorded step (update / weight = {r:.3g} "
                        "at the last): the steps are too large for the weights."
                    ),
                    [n for _, n in sorted(large, reverse=True)],
                    _FIX_UPDATE,
                    step,
                    {"subkind": "update", "update_ratio": r},
                )
            )
        return out

    @staticmethod
    def _largest(record: dict) -> list[str]:
        norms = [(v["grad_norm"], n) for n, v in record["params"].items() if _finite(v["grad_norm"])]
        return [n for _, n in sorted(norms, reverse=True)[:3]]

    # --- vanishing -------------------------------------------------------------------------

    def _vanishing(self, record: dict) -> list[Finding]:
        if any(k == "vanishing-gradient" for k, *_ in self.raised):
            return []
        mon = self.mon
        layers = []
        for name, v in record["params"].items():
            g, w = v["grad_norm"], v["param_norm"]
            if mon.ndim.get(name, 0) < 2 or name in mon.embeddings or not _finite(g) or not _finite(w):
                continue
            if g == 0 or w == 0:
                continue  # frozen or unused (no gradient at all) or zero-initialised: not a decay
            layers.append((name, g / w))
        if len(layers) < MIN_LAYERS:
            self.vanishing = 0
            return []
        last_half = [r for _, r in layers[len(layers) // 2 :]]
        reference = statistics.median(last_half)
        first_name, first = layers[0]
        if reference > 0 and first < RATIO * reference:
            self.vanishing += 1
        else:
            self.vanishing = 0
        if self.vanishing < SUSTAIN:
            return []
        step = record["step"]
        return [
            self._finding(
                "vanishing-gradient",
                "warning",
                (
                    f"For {SUSTAIN} recorded steps up to step {step}, the first layer's gradient relative to its "
                    "weights "
                    f"({first_name}: {first:.3g}) stayed below {RATIO:g} times that of the last layers "
                    f"(median {reference:.3g}): the first layers barely learn."
                ),
                [first_name],
                _FIX_VANISH,
                step - (SUSTAIN - 1) * mon.every,
                {"first_layer_ratio": first, "last_layers_ratio": reference, "layers": len(layers)},
            )
        ]

    # --- dead units ------------------------------------------------------------------------

    def _dead(self, record: dict, windows: dict) -> list[Finding]:
        out = []
        for name, (act, now) in windows.items():
            if ("dead-units", name) in self.raised or not _finite(now) or now < DEAD_FRACTION:
                continue
            if len(act.window) < act.window.maxlen:
                continue
            fraction, units = act.dead_over_window()
            if units < MIN_UNITS or fraction < DEAD_FRACTION:
                continue
            step = record["step"]
            self.raised.add(("dead-units", name))
            out.append(
                Finding(
                    "dead-units",
                    "warning",
                    (
                        f"At step {step}, {fraction:.0%} of the {units} units of {name} were <= 0 for every sample of "
                        f"the last {act.window.maxlen} recorded batches: those units are dead and pass no gradient."
                    ),
                    *_site(),
                    (name,),
                    _FIX_DEAD,
                    step,
                    {"dead_fraction": fraction, "units": units, "module": name},
                )
            )
        return out

    def _finding(self, kind, severity, message, params, fix, step, data) -> Finding:
        self.raised.add((kind,))
        return Finding(kind, severity, message, *_site(), tuple(params), fix, step, data)


def _finite_or_none(v: Any) -> bool:
    return v is None or _finite(v)


def _site() -> tuple[str | None, int | None]:
    site = user_site()
    return (site.file, site.line) if site is not None else (None, None)


class Locator:
    """Names the operation and the line of a non-finite value the monitor saw at step K.

    First, where the monitor kept the step's model calls (their inputs, by reference) and
    the weights before its update, each call is replayed under the doctor's recorder with
    those weights (``torch.func.functional_call``; the model's buffers, flags and the RNG
    states are put back, and dropout and batch-norm statistics are off), so that a value
    born in the model's forward is named at once, at its line. Otherwise the recorder is
    armed for up to ``LOCATE_STEPS`` next steps, whose first ``non-finite`` finding in the
    step's own computation completes the monitor's (which keeps step K). Weights that the
    update already made non-finite are not a cause; they are said as such.
    """

    def __init__(self, mon: GradientMonitor, finding: Finding, calls: list, before: dict, poisoned: bool):
        self.mon = mon
        self.finding = finding
        self.calls = calls
        self.before = before
        self.poisoned = poisoned
        self.tries = 0
        self.doctor: Any = None
        self.replayed: str | None = None  # what the replay found when it named nothing

    def start(self) -> None:
        located = self._replay()
        if located is not None:
            self._done(located, replayed=True)
            return
        self.mon._locator = self
        self._arm()
        if self.doctor is None:
            self._done(None)

    # --- the replay -------------------------------------------------------------------------

    def _replay(self) -> Finding | None:
        if not self.calls or not self.before:
            return None
        outputs_finite = True
        for call in self.calls:
            try:
                located, finite = self._replay_call(call)
            except Exception as exc:
                self.mon._fault("replaying the model", exc)
                return None
            if located is not None:
                return located
            outputs_finite = outputs_finite and finite
        if outputs_finite:
            self.replayed = (
                "Replayed with the weights of that step, the model's forward gave finite outputs: the value was born "
                "after the model (in the loss, or in code between the model's output and backward()) or in the "
                "backward."
            )
        return None

    def _replay_call(self, call) -> tuple[Finding | None, bool]:
        from gradwise._graph import tensors_in
        from gradwise.doctor._mixing import _untouched
        from gradwise.doctor._watch import Doctor

        module = call.module()
        if module is None:
            return None, True
        with _untouched(module):
            torch.set_rng_state(call.rng)
            if call.cuda_rng is not None:
                torch.cuda.set_rng_state_all(call.cuda_rng)
            weights = {}
            for name, p in module.named_parameters():
                value = self.before.get(id(p), p).detach().clone()
                weights[name] = value.requires_grad_(p.requires_grad)
            doctor = Doctor(module, max_steps=1, stop=False)
            doctor._start()
            try:
                with torch.enable_grad():
                    out = torch.func.functional_call(module, weights, call.args, call.kwargs)
                    roots = [t for t in tensors_in(out) if t.is_floating_point() and t.requires_grad]
                    finite = all(bool(torch.isfinite(t.detach()).all()) for t in roots)
                    leaves = [w for w in weights.values() if w.requires_grad]
                    if roots and leaves:  # also a backward: a value born in the model's backward (sqrt at 0)
                        sum(t.sum() for t in roots).backward(inputs=leaves)
            finally:
                doctor._finish()
        found = [f for f in doctor.findings if f.kind == "non-finite"]
        if not found:
            return None, finite
        f = found[0]
        if f.subkind == "data" and call.site is not None:  # the input already holds it: where the model was called
            message = f"The model's input already holds NaN/Inf at its call ({call.site}). {f.message}"
            f = Finding(
                f.kind, f.severity, message, call.site.file, call.site.line, f.parameters, f.fix, f.step, f.data
            )
        return f, finite

    # --- the next steps ---------------------------------------------------------------------

    def _arm(self) -> None:
        from gradwise.doctor._watch import Doctor

        self.tries += 1
        try:
            model = next((m for _, m in self.mon._models), None)
            doctor = Doctor(model, max_steps=1, stop=False)
            doctor.weights_known_nonfinite = self.poisoned
            doctor._start()
        except Exception as exc:
            self.mon._fault("arming the recorder", exc)
            return
        self.doctor = doctor

    def quiet(self) -> contextlib.AbstractContextManager:
        return self.doctor.inst.quiet() if self.doctor is not None else contextlib.nullcontext()

    def after_step(self) -> None:
        """An optimizer step ended: if the armed doctor watched a backward, read its finding."""
        doctor = self.doctor
        if doctor is None or doctor.steps < 1:
            return
        located = self._finish()
        if located is not None or self.tries >= LOCATE_STEPS:
            self._done(located)
        else:
            self._arm()
            if self.doctor is None:
                self._done(None)

    def _finish(self) -> Finding | None:
        doctor, self.doctor = self.doctor, None
        try:
            doctor._finish()
            found = [f for f in doctor.findings if f.kind == "non-finite"]
        except Exception as exc:
            self.mon._fault("the armed recorder", exc)
            return None
        if found and found[0].subkind == "parameter":
            return None  # the weights the update made non-finite: a result, not the cause
        return found[0] if found else None

    def _done(self, located: Finding | None, stop: bool = True, replayed: bool = False) -> None:
        mon = self.mon
        if mon._locator is self:
            mon._locator = None
        f = self.finding
        if located is None:
            parts = [f.message]
            if self.replayed:
                parts.append(self.replayed)
            if self.tries:
                parts.append(
                    f"The recorder, armed after it ({self.tries} time(s), one step each), saw no new non-finite "
                    "value born in the "
                    "step's own computation"
                    + (" (the update of that step had written NaN/Inf into the weights)." if self.poisoned else ".")
                )
            finding = Finding(
                f.kind, f.severity, " ".join(parts), None, None, f.parameters, _FIX_UNLOCATED, f.step, f.data
            )
        else:
            if replayed:
                seen = "The model's forward of that step, replayed under the recorder with the same weights and inputs:"
                data = {**dict(f.data), "located_by": "replay", "located": dict(located.data)}
            else:
                later = f.step + self.tries if f.step is not None else None
                seen = "The recorder armed after it saw, " + (
                    "in the next step:" if self.tries == 1 else f"{self.tries} steps later:"
                )
                data = {
                    **dict(f.data),
                    "located_by": "next-step",
                    "located_at_step": later,
                    "located": dict(located.data),
                }
            finding = Finding(
                f.kind,
                f.severity,
                f"{f.message} {seen} {located.message}",
                located.file,
                located.line,
                f.parameters,
                located.fix,
                f.step,
                data,
            )
        mon.add_finding(finding, stop=stop)

    def close(self) -> None:
        """The monitor detaches: finish the armed doctor, say what is known."""
        located = None
        if self.doctor is not None:
            if self.doctor.steps >= 1:
                located = self._finish()
            else:
                doctor, self.doctor = self.doctor, None
                with contextlib.suppress(Exception):
                    doctor._finish()
        self._done(located, stop=False)


_FIX_UNLOCATED = (
    "Run `gradwise doctor SCRIPT --steps N` over the steps before it, or wrap those steps in gw.doctor.watch(); "
    "look for log/sqrt/division of values that can reach 0 and for a learning rate that is too large."
)
