"""non-finite: where the first NaN or Inf was born, in the forward or in the backward.

Forward: when the loss a ``backward()`` starts from is not finite, its values are followed
back through the recorded operations (``gradwise.doctor._stats``) to the first operation
whose output holds NaN/Inf while every tensor input that reaches it is finite, and the
inputs' values at that operation's singular points are put in words (``log`` of 0,
``exp`` overflowing, ``0/0``, a fully masked row). ``-inf`` written on purpose (a mask
filled with ``float('-inf')``) is not a birth; an operation that turns it into NaN (a
softmax over a row masked everywhere, ``0 * inf``) is. Data that is already non-finite where
it enters torch is reported at the line that made the tensor.

Backward: when the loss is finite but a gradient is not, the first autograd node (in
execution order) that produced a non-finite gradient from finite ones is mapped back to the
forward operation that made it (``sqrt`` at 0, ``acos`` at 1, the masked-out branch of a
``torch.where``). Under a ``GradScaler`` infinite gradients are the scaler's business
(it skips the step) and are not reported. Only the first non-finite value of a watch is
reported: everything after it follows from it.
"""

from __future__ import annotations

import math

import torch

from gradwise.doctor._checks import BackwardEvent, Check
from gradwise.doctor._stats import OpRecord

_DATA_OPS = frozenset({"tensor", "as_tensor", "asarray", "from_numpy", "from_file", "frombuffer", "load"})
_WRITES = frozenset({"__setitem__", "fill_", "index_put_", "masked_fill_", "copy_", "scatter_", "index_fill_"})
_LOGS = frozenset({"log", "log2", "log10"})
_EXPS = frozenset({"exp", "expm1", "exp2", "cosh", "sinh"})
_DIVS = frozenset({"div", "true_divide", "__truediv__", "divide", "__rtruediv__", "reciprocal", "__itruediv__"})
_ARCS = frozenset({"acos", "asin", "atanh", "arccos", "arcsin", "arctanh"})
_ROWS = frozenset({"softmax", "log_softmax", "logsumexp", "softmin", "amax", "max"})
_POWS = frozenset({"pow", "__pow__", "float_power"})
_REDUCERS = _ROWS | {"sum", "mean", "nansum"}

_FIX_LOG = (
    "Keep the argument of {op} positive: torch.{op}(x.clamp_min(1e-8)) (or torch.finfo(x.dtype).tiny), or add a "
    "small eps inside: torch.{op}(x + 1e-8)."
)
_FIX_LOG_OF = {
    "softmax": "Use F.log_softmax(logits, dim) instead of log(softmax(logits)): it is exact where softmax "
    "underflows to 0.",
    "sigmoid": "Use F.logsigmoid(x) instead of log(sigmoid(x)), or BCEWithLogitsLoss on the logits instead of BCE on "
    "probabilities.",
}
_FIX_EXP = (
    "Do not exponentiate large values: use torch.logsumexp / F.log_softmax / F.softmax instead of exp followed by "
    "a normalisation; where exp itself is needed (a log-variance), clamp its input (logvar.clamp(-30, 20)); under "
    "float16 autocast compute it in float32."
)
_FIX_ROW = (
    "Keep at least one unmasked position in every row (a padded query may attend to itself), or mask with a large "
    "finite value (torch.finfo(x.dtype).min) instead of -inf, or zero the fully masked rows after the softmax."
)
_FIX_DATA = (
    "Clean the data before it reaches the model: find the bad rows (torch.isnan(x).any(dim=1), np.isnan), then drop "
    "or impute them; look for a division by zero or a missing value read as NaN in the preprocessing."
)
_FIX_SAFE_WHERE = (
    "Use the 'safe where' pattern: make the masked-out inputs harmless before the operation, e.g. "
    "torch.where(x > 0, torch.sqrt(torch.where(x > 0, x, torch.ones_like(x))), 0.0), or clamp inside the branch "
    "(x.clamp_min(1e-12)): torch.where picks values, but the gradient of the unused branch is still multiplied by 0, "
    "and 0 * inf is NaN."
)
_FIX_SQRT_BACKWARD = (
    "Keep sqrt away from 0: x.clamp_min(1e-12).sqrt(); for a norm use torch.linalg.vector_norm(x, dim=-1) (its "
    "gradient at 0 is 0) instead of a hand-written (x ** 2).sum(-1).sqrt()."
)
_FIX_ARC = (
    "Clamp the argument strictly inside (-1, 1): torch.{op}(x.clamp(-1 + 1e-7, 1 - 1e-7)) (a cosine similarity can "
    "reach or exceed 1 by rounding, and the derivative is infinite at +-1)."
)


def _base(op: str) -> str:
    return op[:-1] if op.endswith("_") and not op.endswith("__") else op


def _n(k: float) -> str:
    return f"{int(k):,}"


class NonFinite(Check):
    kind = "non-finite"
    order = 12
    numerics = True

    def __init__(self, doctor):
        super().__init__(doctor)
        self.found = False
        self.step: int | None = None  # the watched step (0-based) where it was found
        self.in_data = False  # what it found was already in the data (no explosion makes that)

    # --- events -------------------------------------------------------------------------------

    def before_backward(self, event: BackwardEvent) -> None:
        if self.found:
            return
        stats = self.doctor.stats
        if not stats.loss_finite:
            self.found, self.step = True, event.step
            self._forward(event)
        elif not stats.is_scaled:
            stats.hook_graph([r for r in event.roots if r.grad_fn is not None])

    def after_backward(self, event: BackwardEvent) -> None:
        numbers = event.numbers
        if self.found or numbers is None or not numbers.nonfinite or numbers.scaled:
            return
        self.found, self.step = True, event.step
        params = numbers.nonfinite
        rec = self.doctor.stats.first_nonfinite_node(params)
        nan = any(math.isnan(numbers.grad[p]) for p in params)
        what = "NaN" if nan else "Inf"
        data = {"where": "backward", "value": what, "parameters_hit": len(params)}
        if rec is None:
            self.doctor.add(
                self.kind,
                "error",
                f"The backward produced {what} gradients from a finite loss, in an operation the doctor did not "
                "record (a compiled region or an extension).",
                event.site,
                params,
                "Run the step without torch.compile under the doctor to see the operation; check custom backward "
                "functions for divisions by zero.",
                step=event.step + 1,
                data={**data, "subkind": "backward"},
            )
            return
        message, fix, extra = self._explain_backward(rec)
        self.doctor.add(
            self.kind,
            "error",
            f"The loss is finite but its gradient is not: the backward of {_base(rec.op)} on this line produced "
            f"{what} from finite gradients. {message}",
            rec.site,
            params,
            fix,
            step=event.step + 1,
            data={**data, **extra, "op": _base(rec.op), "subkind": "backward"},
        )

    # --- forward ------------------------------------------------------------------------------

    def _forward(self, event: BackwardEvent) -> None:
        stats = self.doctor.stats
        value = stats.loss_value
        what_loss = "NaN" if value is not None and math.isnan(value) else "Inf"
        birth = self._birth(event)
        if birth is None:
            self.doctor.add(
                self.kind,
                "error",
                f"The loss is {what_loss}, and the operation that made the first non-finite value was not recorded "
                "(a compiled region, an extension, or work done before the watch began).",
                event.site,
                sorted(set().union(*(i.prov for i in event.infos if i is not None)), key=lambda p: p.key),
                "Check the inputs with torch.isfinite(x).all() and run the step without torch.compile under the "
                "doctor to see the operation.",
                step=event.step + 1,
                data={"where": "forward", "value": what_loss, "subkind": "forward"},
            )
            return
        message, fix, extra = self._explain_forward(birth)
        self.in_data = extra.get("subkind") == "data"
        params = [birth.param] if birth.param is not None else []
        if not params:
            info = self.doctor.provenance.info(birth.output())
            params = sorted(info.prov, key=lambda p: p.key) if info is not None else []
        self.doctor.add(
            self.kind,
            "error",
            message + f" The loss is {what_loss} as a result.",
            birth.site,
            params,
            fix,
            step=event.step + 1,
            data={"where": "forward", **extra},
        )

    def _birth(self, event: BackwardEvent) -> OpRecord | None:
        """The first record on the loss's lineage whose non-finite values were born there."""
        stats = self.doctor.stats
        values = stats.op_values()
        ops = stats.ops
        state: list[str] = []  # per record: finite / deliberate / nonfinite
        for rec, v in zip(ops, values, strict=True):
            if v is None or math.isfinite(v):
                state.append("finite")
                continue
            if rec.source is not None:
                state.append("nonfinite")
                continue
            bad = any(state[j] == "nonfinite" for j in rec.inputs)
            if bad or self._holds_nan(rec, v):
                state.append("nonfinite")
            elif any(state[j] == "deliberate" for j in rec.inputs) or any(math.isinf(s) for s in rec.scalars):
                state.append("deliberate")  # -inf written on purpose (a mask), or carried on unchanged
            else:
                state.append("nonfinite")
        starts = []
        for r in event.roots:
            idx = stats.producer.get(stats.root_loss(r))
            if idx is not None and state[idx] != "finite":
                starts.append(idx)
        if not starts:  # the loss was made where the doctor did not see: the first birth of the step
            births = [i for i, s in enumerate(state) if s == "nonfinite" and not self._carried(ops[i], state)]
            return ops[births[0]] if births else None
        births, deliberate, seen, stack = [], [], set(), list(starts)
        while stack:
            i = stack.pop()
            if i in seen:
                continue
            seen.add(i)
            rec = ops[i]
            if state[i] == "deliberate":
                deliberate.append(i)
                stack.extend(j for j in rec.inputs if state[j] == "deliberate")
                continue
            inputs = [j for j in rec.inputs if state[j] == "nonfinite"]
            if inputs and not self._singular(rec):
                stack.extend(inputs)
            else:
                births.append(i)
        if births:
            if self.doctor.weights_known_nonfinite:  # armed by the monitor after an update wrote NaN into them
                computed = [i for i in births if ops[i].source != "parameter"]
                births = computed or births
            return ops[min(births)]
        # only -inf written on purpose reached the loss: name the reduction that kept it (a row masked everywhere)
        reducers = [i for i in deliberate if _base(ops[i].op) in _REDUCERS]
        chosen = min(reducers) if reducers else (max(deliberate) if deliberate else None)
        return None if chosen is None else ops[chosen]

    def _singular(self, rec: OpRecord) -> bool:
        """With weights known to be non-finite (the monitor armed this watch after an update wrote
        NaN into them), an operation at a singular point (a division by 0, log or sqrt of a value
        <= 0) is a birth of its own even though an input is already non-finite: it would have
        made Inf/NaN from the finite weights too; so is one given a NaN as a number."""
        if not self.doctor.weights_known_nonfinite:
            return False
        if any(isinstance(v, float) and math.isnan(v) for v in rec.scalars):
            return True  # a NaN written in: loss * float("nan"), x.fill_(nan)
        if rec.evidence is None:
            return False
        op = _base(rec.op)
        ev = _values(rec.evidence)
        if op in _DIVS:
            return ev[0] > 0
        if op in _LOGS | {"log1p", "sqrt", "rsqrt"}:
            return ev[0] + ev[1] > 0
        return False

    @staticmethod
    def _carried(rec: OpRecord, state: list[str]) -> bool:
        return any(state[j] == "nonfinite" for j in rec.inputs)

    @staticmethod
    def _holds_nan(rec: OpRecord, total: float) -> bool:
        out = rec.output()
        if out is not None:
            try:
                return bool(torch.isnan(out.detach()).any())
            except Exception:
                pass
        return math.isnan(total)

    # --- words ------------------------------------------------------------------------------

    def _explain_forward(self, rec: OpRecord) -> tuple[str, str, dict]:
        """The message (what was born, in words), the fix, and the figures."""
        out = rec.output()
        nan, inf, total = _census(out)
        value = "NaN" if nan else "Inf"
        count = nan if nan else inf
        of = f"{_n(count)} of {_n(total)}" if total else "some"
        op = _base(rec.op)
        data = {"op": op, "value": value, "count": count, "numel": total}
        ev = _values(rec.evidence)
        stats = self.doctor.stats

        if rec.source is not None:
            if rec.source == "parameter":
                name = self.doctor.name(rec.param)
                return (
                    (
                        f"The parameter {name} already holds NaN/Inf when this step begins ({of} elements): an earlier "
                        "update (before the watch) made it non-finite."
                    ),
                    (
                        "Watch from the first step (gradwise doctor runs the whole script) to see where it began; "
                        "lower the learning rate or clip gradients (torch.nn.utils.clip_grad_norm_)."
                    ),
                    {**data, "subkind": "parameter"},
                )
            return (
                (
                    f"The data used here already holds {value} ({of} elements) when it enters the computation: it was "
                    "made before the watch began, outside torch, or in a DataLoader worker."
                ),
                _FIX_DATA,
                {**data, "subkind": "data"},
            )
        if op in _DATA_OPS or (rec.op in _WRITES and not rec.inputs[1:]):
            return (
                f"The data already holds {value} when it enters torch here ({of} elements of the tensor made by {op}).",
                _FIX_DATA,
                {**data, "subkind": "data"},
            )
        data["subkind"] = "forward"
        source = stats.ops[rec.inputs[0]] if rec.inputs else None
        if op in _LOGS and ev:
            zeros, neg = int(ev[0]), int(ev[1])
            n_in = _numel(rec)
            fix = _FIX_LOG_OF.get(_base(source.op) if source else "", _FIX_LOG.format(op=op))
            if zeros and not neg:
                msg = f"{op} of 0 is -inf: {_n(zeros)} of {_n(n_in)} inputs are exactly 0."
            elif neg:
                msg = f"{op} of a negative number is NaN: {_n(neg)} of {_n(n_in)} inputs are below 0" + (
                    f" (and {_n(zeros)} exactly 0)." if zeros else "."
                )
            else:
                msg = f"{op} returned {value} ({of} elements)."
            return msg, fix, {**data, "zeros": zeros, "negative": neg}
        if op == "log1p" and ev:
            return (
                f"log1p of a value at or below -1: {_n(ev[0] + ev[1])} of {_n(_numel(rec))} inputs are <= -1.",
                "Keep the argument of log1p above -1 (x.clamp_min(-1 + 1e-6)).",
                data,
            )
        if op in ("sqrt", "rsqrt") and ev:
            zeros, neg = int(ev[0]), int(ev[1])
            smallest = _amin(rec.input(0))
            return (
                f"{op} of a negative number is NaN: {_n(neg)} of {_n(_numel(rec))} inputs are below 0"
                + (f" (smallest {smallest:.4g})." if smallest is not None else ".")
                if neg
                else f"rsqrt of 0 is Inf: {_n(zeros)} inputs are exactly 0.",
                (
                    "Clamp the argument: x.clamp_min(0).sqrt() (or + eps); a variance computed as E[x^2] - E[x]^2 can "
                    "come out slightly negative: use torch.var."
                ),
                {**data, "zeros": zeros, "negative": neg},
            )
        if op in _EXPS and ev:
            largest = ev[0]
            dtype = rec.dtype or torch.float32
            limit = math.log(torch.finfo(dtype).max)
            return (
                (
                    f"{op} overflows {_dtype(dtype)}: largest input {largest:.4g} (exp overflows above {limit:.1f}), "
                    f"so {of} outputs are Inf."
                ),
                _FIX_EXP,
                {**data, "largest_input": largest, "limit": limit},
            )
        if op in _DIVS and ev:
            zeros, both = int(ev[0]), int(ev[1])
            divisor = rec.kept
            where = _zero_columns(divisor)
            made = stats.ops[rec.inputs[-1]] if rec.inputs else None
            std = made is not None and _base(made.op) in ("std", "var", "std_mean", "var_mean")
            kind = "0/0" if both else "a division by 0"
            msg = f"{kind}: the divisor is 0 in {_n(zeros)} element(s)"
            if std:
                msg += where[:-1] + "; a constant column's std)." if where else " (a constant column's std)."
            else:
                msg += where + "."
            fix = (
                "Standardise with an eps: (x - x.mean(0)) / (x.std(0) + 1e-8), or drop the constant columns."
                if std
                else "Add an eps to the divisor (x / (d + 1e-8)) or guard it: torch.where(d != 0, x / d, 0) with the "
                "safe-where pattern; for a normalisation use F.normalize(x, dim=...)."
            )
            return msg, fix, {**data, "zero_divisors": zeros, "zero_over_zero": both}
        if op in _ARCS and ev:
            at, beyond = int(ev[0]), int(ev[1])
            return (
                f"{op} of a value outside [-1, 1] is NaN: {_n(beyond)} of {_n(_numel(rec))} inputs have |x| > 1.",
                _FIX_ARC.format(op=op),
                {**data, "at_one": at, "beyond_one": beyond},
            )
        if op in _POWS and ev:
            zeros, neg = int(ev[0]), int(ev[1])
            exponent = next((s for s in rec.scalars), None)
            if neg and value == "NaN":
                msg = f"a negative number to a fractional power is NaN: {_n(neg)} inputs are below 0 (x ** {exponent})."
                fix = "Raise only non-negative values: x.clamp_min(0) ** p, or x.abs() ** p * x.sign()."
            elif zeros and exponent is not None and exponent < 0:
                msg = f"0 to a negative power is Inf: {_n(zeros)} inputs are exactly 0 (x ** {exponent})."
                fix = "Keep the base away from 0: x.clamp_min(1e-8) ** p."
            else:
                msg = f"x ** {exponent} overflows {_dtype(rec.dtype)}: largest |input| {ev[2]:.4g}."
                fix = "Compute in log space or normalise the input first."
            return msg, fix, data
        if op in _ROWS and ev and ev[0]:
            rows, nrows = int(ev[0]), int(ev[1])
            return (
                (
                    f"{op} over a row that is -inf everywhere (every position masked) gives {value}: {_n(rows)} of "
                    f"{_n(nrows)} rows are fully masked."
                ),
                _FIX_ROW,
                {**data, "masked_rows": rows, "rows": nrows},
            )
        if op in ("mul", "__mul__", "__rmul__", "__imul__") and any(math.isinf(s) for s in rec.scalars):
            return (
                "0 * inf is NaN: a tensor holding zeros was multiplied by inf (a mask built by multiplication).",
                "Build the mask with masked_fill: scores.masked_fill(~keep, float('-inf')), not keep * -inf.",
                data,
            )
        if any(isinstance(v, float) and math.isnan(v) for v in rec.scalars):
            return (
                f"{op} is given NaN as a number here (float('nan')), so its result is NaN ({of} elements).",
                (
                    "Remove the NaN constant; to mark missing values use a boolean mask (and torch.nan_to_num or "
                    "torch.where to fill them) instead of NaN inside the computation."
                ),
                {**data, "nan_constant": True},
            )
        largest = _largest_input(rec)
        msg = f"{op} returned {value} ({of} elements) although all its inputs are finite"
        if largest is not None:
            msg += f" (largest |input| {largest:.4g})"
        if value == "Inf" and rec.dtype is not None and largest is not None:
            msg += f": its result overflows {_dtype(rec.dtype)}."
            fix = (
                "Compute it in float32 (under float16 autocast, cast: x.float()) or prefer bfloat16."
                if rec.dtype == torch.float16
                else "Normalise the inputs or lower their scale; if the weights have grown huge, lower the learning "
                "rate."
            )
        else:
            msg += "."
            fix = "Check this operation's inputs (torch.isfinite) and its domain; clamp them into it."
        return msg, fix, {**data, "largest_input": largest}

    def _explain_backward(self, rec: OpRecord) -> tuple[str, str, dict]:
        op = _base(rec.op)
        ev = _values(rec.evidence)
        n_in = _numel(rec)
        where = self._consumer(rec, "where")
        note = (
            f" Its output is used by torch.where (line {where.site.line}): the positions torch.where masks out still "
            "get a zero gradient, and 0 times an infinite derivative is NaN."
            if where is not None and where.site is not None
            else ""
        )
        if op in ("sqrt", "rsqrt") and ev:
            zeros, neg = int(ev[0]), int(ev[1])
            parts = []
            if zeros:
                parts.append(f"its derivative is infinite at 0 and {_n(zeros)} of {_n(n_in)} inputs are exactly 0")
            if neg:
                parts.append(f"{op} is NaN below 0 and {_n(neg)} of {_n(n_in)} inputs are negative")
            msg = ("; ".join(parts) or f"its derivative is not finite at the {_n(n_in)} values it received") + "."
            msg = msg[0].upper() + msg[1:]
            fix = _FIX_SAFE_WHERE if where is not None else _FIX_SQRT_BACKWARD
            return msg + note, fix, {"zeros": zeros, "negative": neg}
        if op in _POWS and ev:
            exponent = next((s for s in rec.scalars), None)
            zeros, neg = int(ev[0]), int(ev[1])
            msg = f"The derivative of x ** {exponent} is infinite at 0: {_n(zeros)} of {_n(n_in)} inputs are exactly 0."
            fix = _FIX_SAFE_WHERE if where is not None else _FIX_SQRT_BACKWARD
            return msg + note, fix, {"zeros": zeros, "negative": neg, "exponent": exponent}
        if op in _LOGS | {"log1p"} and ev:
            zeros, neg = int(ev[0]), int(ev[1])
            msg = f"The derivative of {op} is infinite at 0: {_n(zeros)} of {_n(n_in)} inputs are exactly 0" + (
                f", and {_n(neg)} are negative (log is NaN there)." if neg else "."
            )
            fix = _FIX_SAFE_WHERE if where is not None else _FIX_LOG.format(op=op if op != "log1p" else "log")
            return msg + note, fix, {"zeros": zeros, "negative": neg}
        if op in _ARCS and ev:
            at = int(ev[0])
            return (
                f"The derivative of {op} is infinite at +-1: {_n(at)} of {_n(n_in)} inputs are exactly +-1.{note}",
                _FIX_ARC.format(op=op),
                {"at_one": at},
            )
        if op in ("std", "var", "std_mean", "var_mean") and ev:
            return (
                f"The gradient of {op} is NaN where the result is 0 (a constant input): {_n(ev[0])} result(s) are 0.",
                "Add an eps inside the square root: torch.sqrt(x.var(dim) + 1e-8) instead of x.std(dim).",
                {"zero_results": int(ev[0])},
            )
        if op in _DIVS and ev:
            return (
                f"A division by 0 in the forward: the divisor is 0 in {_n(ev[0])} element(s).{note}",
                "Add an eps to the divisor, or use the safe-where pattern for the masked positions.",
                {"zero_divisors": int(ev[0])},
            )
        return (
            f"Its derivative is not finite at the values it received.{note}",
            _FIX_SAFE_WHERE
            if where is not None
            else "Keep this operation's inputs away from its singular points (clamp them, add an eps).",
            {},
        )

    def _consumer(self, rec: OpRecord, op: str, depth: int = 3) -> OpRecord | None:
        """An operation named ``op`` that uses ``rec``'s output directly or through up to
        ``depth`` operations (``-torch.sqrt(-z)`` inside a torch.where)."""
        frontier = {rec.index}
        for _ in range(depth):
            users = [o for o in self.doctor.stats.ops[rec.index + 1 :] if frontier.intersection(o.inputs)]
            for other in users:
                if _base(other.op) == op:
                    return other
            frontier = {o.index for o in users}
            if not frontier:
                break
        return None


def _values(evidence: torch.Tensor | None) -> list[float]:
    return [] if evidence is None else evidence.tolist()


def _census(t: torch.Tensor | None) -> tuple[int, int, int]:
    if t is None:
        return 0, 0, 0
    t = t.detach()
    return int(torch.isnan(t).sum()), int(torch.isinf(t).sum()), t.numel()


def _numel(rec: OpRecord) -> int:
    x = rec.input(0)
    return x.numel() if x is not None else math.prod(rec.shape)


def _amin(t: torch.Tensor | None) -> float | None:
    if t is None or t.numel() == 0:
        return None
    return float(t.detach().amin())


def _largest_input(rec: OpRecord) -> float | None:
    values = []
    for i in range(len(rec.refs)):
        t = rec.input(i)
        if t is not None and t.numel():
            values.append(float(t.detach().abs().amax()))
    return max(values) if values else None


def _zero_columns(divisor: torch.Tensor | None) -> str:
    """' in column 3' (or 'columns 3, 7') when the divisor is a row of per-column values."""
    if divisor is None or divisor.dim() == 0:
        return ""
    d = divisor.detach()
    if d.dim() == 2 and d.shape[0] == 1:
        d = d[0]
    if d.dim() != 1:
        return ""
    cols = torch.nonzero(d == 0).flatten().tolist()
    if not cols:
        return ""
    shown = ", ".join(str(c) for c in cols[:5]) + (", ..." if len(cols) > 5 else "")
    return f" (column{'s' if len(cols) > 1 else ''} {shown})"


def _dtype(dtype: torch.dtype | None) -> str:
    return str(dtype or torch.float32).replace("torch.", "")
