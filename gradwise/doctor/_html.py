"""An HTML report of a training run recorded by the gradient monitor, in one self-contained file.

The input is the monitor's records, one dict per recorded optimizer step, as its JSONL log reads
back. The page, top to bottom:

1. header: the title, the source, the steps recorded, how many parameters, modules and optimizers,
   and a one-line verdict (the alerts, and where NaN/Inf gradients first appeared);
2. findings: severity, kind, a link to the step's row (``#step-N``), ``file:line``, the message,
   the fix and the parameters;
3. gradient flow: the gradient norm of every parameter in model order (first layer on the left,
   log scale), one line per chosen step (the first, a few evenly spaced, the last, every step with
   a finding, the first non-finite one) over a grey band, the range over all recorded steps;
4. over steps: the gradient norm of each parameter (of each layer, its parameters' norms combined,
   when there are more than 10) and the total, then the update/weight ratios with the usual healthy
   1e-3 dashed; at most 10 lines: the first, the last, the first to go non-finite, the smallest and
   the largest by peak gradient norm, the rest counted as hidden;
5. dead and saturated fractions per module (at most 8 modules);
6. the loss (log scale when it is positive and spans more than two decades);
7. a compact table of chosen steps, each with its anchor ``id="step-N"``.

Pictures are inline SVG, hover text is SVG ``<title>``, and the styles live in one ``<style>``
scoped under ``.gw-report``: no script, no font, no network, nothing outside the file.

Non-finite values are never dropped: a red cross in a band above a plot marks each one (a bar
marks a run of them), with the step and the value in its hover text. On a log axis, values at or
below its floor (zeros) are drawn on the floor and marked with a triangle. A long series is
thinned to about 500 points (the smallest and largest of each bucket, every step with a finding,
the ends of every unbroken stretch), so that 10,000 steps of 200 parameters stay a few hundred
kilobytes.
"""

from __future__ import annotations

import bisect
import html
import json
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gradwise._validate import describe
from gradwise.doctor._findings import SEVERITIES
from gradwise.errors import ArgumentError, ArgumentTypeError

__all__ = ["render_fragment", "render_html"]

_MAX_POINTS = 500  # per drawn series
_MAX_LINES = 10  # series over steps
_MAX_MODULES = 8
_MAX_FLOW_LINES = 12
_MAX_FINDINGS = 50  # drawn in full; the rest are counted
_TABLE_SPACED = 10  # evenly spaced rows of the step table, besides the steps that matter
_LABEL_CHARS = 30
_REFERENCE_RATIO = 1e-3
_MAX_DECADES = 32  # on a log axis; smaller values sit on its floor, marked

# Paul Tol's "muted" scheme (colour-blind safe), ordered so that neighbours contrast
_PALETTE = ("#332288", "#CC6677", "#117733", "#88CCEE", "#AA4499", "#DDCC77", "#44AA99", "#882255", "#999933")
# viridis, dark to green (its yellow end is unreadable on white): the steps of the gradient flow, early to late
_SEQUENTIAL = ("#440154", "#482878", "#3E4989", "#31688E", "#26828E", "#1F9E89", "#35B779", "#6ECE58")
_NONFINITE = "#D00000"
_SEVERITY_COLOUR = {"error": "#B2182B", "warning": "#C97C00", "info": "#2166AC"}
_SEVERITY_ORDER = {s: i for i, s in enumerate(SEVERITIES)}

_W = 960  # viewBox width of every plot
_LEFT, _RIGHT, _TOP = 72, 20, 30
_BAND_Y = 15  # the centre of the non-finite band, above the data area


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


# ----------------------------------------------------------------------------------------------
# Reading and checking the records


@dataclass
class _Column:
    """One parameter (or layer) over the records that hold it."""

    name: str
    steps: list[int] = field(default_factory=list)
    grad: list[float | None] = field(default_factory=list)
    weight: list[float | None] = field(default_factory=list)
    ratio: list[float | None] = field(default_factory=list)
    nonfinite: list[int] = field(default_factory=list)

    def index(self, step: int) -> int | None:
        i = bisect.bisect_right(self.steps, step) - 1
        return i if i >= 0 and self.steps[i] == step else None


@dataclass
class _ModuleColumn:
    name: str
    steps: list[int] = field(default_factory=list)
    dead: list[float | None] = field(default_factory=list)
    saturated: list[float | None] = field(default_factory=list)


@dataclass
class _OptimizerColumn:
    name: str
    steps: list[int] = field(default_factory=list)
    total: list[float | None] = field(default_factory=list)
    loss: list[float | None] = field(default_factory=list)


@dataclass(frozen=True)
class _Finding:
    kind: str
    severity: str
    message: str
    file: str | None
    line: int | None
    parameters: tuple[str, ...]
    fix: str
    step: int | None  # as the finding says; None: judged over the whole run
    raised_at: int  # the step of the record that holds it
    data: Mapping[str, Any]


@dataclass
class _Run:
    records: list[Mapping[str, Any]]  # checked, in step order
    steps: list[int]  # of the records, in order (repeated where several optimizers step together)
    params: dict[str, _Column]  # in model order
    modules: dict[str, _ModuleColumn]
    optimizers: dict[str, _OptimizerColumn]
    findings: list[_Finding]  # most severe first, then by step
    nonfinite_records: int  # records with a NaN/Inf gradient
    first_nonfinite: tuple[int, str] | None  # (step, parameter)

    def has_step(self, step: int) -> bool:
        i = bisect.bisect_left(self.steps, step)
        return i < len(self.steps) and self.steps[i] == step

    def anchor(self, f: _Finding) -> int | None:
        """The step whose table row a finding links to."""
        if f.step is None:
            return None
        return f.step if self.has_step(f.step) else f.raised_at


def _number(api: str, where: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(
            f"{api}: {where} must be a number or None (got {type(value).__name__}: {describe(value)})"
        )
    return float(value)


def _mapping(api: str, where: str, value: Any, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ArgumentTypeError(
            f"{api}: {where} must be a dict of {what} (got {type(value).__name__}: {describe(value)})"
        )
    return value


def _text(api: str, where: str, value: Any, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        kind = "a str or None" if optional else "a str"
        raise ArgumentTypeError(f"{api}: {where} must be {kind} (got {type(value).__name__}: {describe(value)})")
    return value


def _int(api: str, where: str, value: Any, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        kind = "an int or None" if optional else "an int"
        raise ArgumentTypeError(f"{api}: {where} must be {kind} (got {type(value).__name__}: {describe(value)})")
    return int(value)


def _finding(api: str, where: str, value: Any, raised_at: int) -> _Finding:
    if not isinstance(value, Mapping):
        raise ArgumentTypeError(
            f"{api}: {where} must be a finding dict (Finding.to_dict()) (got {type(value).__name__}: {describe(value)})"
        )
    for key in ("kind", "severity", "message"):
        if key not in value:
            raise ArgumentError(f"{api}: {where} has no {key!r} (keys: {', '.join(map(str, value))})")
    severity = _text(api, f"{where}['severity']", value["severity"])
    if severity not in SEVERITIES:
        valid = ", ".join(repr(s) for s in SEVERITIES)
        raise ArgumentError(f"{api}: {where}['severity'] must be one of {valid} (got {describe(severity)})")
    parameters = value.get("parameters") or ()
    if isinstance(parameters, str) or not isinstance(parameters, Sequence):
        raise ArgumentTypeError(
            f"{api}: {where}['parameters'] must be a list of str (got {type(parameters).__name__}: "
            f"{describe(parameters)})"
        )
    for j, name in enumerate(parameters):
        _text(api, f"{where}['parameters'][{j}]", name)
    return _Finding(
        kind=str(_text(api, f"{where}['kind']", value["kind"])),
        severity=str(severity),
        message=str(_text(api, f"{where}['message']", value["message"])),
        file=_text(api, f"{where}['file']", value.get("file"), optional=True),
        line=_int(api, f"{where}['line']", value.get("line"), optional=True),
        parameters=tuple(parameters),
        fix=_text(api, f"{where}['fix']", value.get("fix"), optional=True) or "",
        step=_int(api, f"{where}['step']", value.get("step"), optional=True),
        raised_at=raised_at,
        data=_mapping(api, f"{where}['data']", value.get("data"), "figures"),
    )


_PLAIN = frozenset({float, int, type(None)})  # exactly these types (bool is not one): no check needed
_PLAIN_INT = frozenset({int, type(None)})


def _param_entry(api: str, where: str, name: Any, entry: Any) -> tuple[Any, Any, Any, Any]:
    """A parameter's entry, checked field by field (the slow path, with the message)."""
    if not isinstance(name, str):
        raise ArgumentTypeError(
            f"{api}: {where} keys must be parameter names (got {type(name).__name__}: {describe(name)})"
        )
    at = f"{where}[{name!r}]"
    entry = _mapping(api, at, entry, "norms")
    bad = _int(api, f"{at}['nonfinite']", entry.get("nonfinite"), optional=True)
    if bad is not None and bad < 0:
        raise ArgumentError(f"{api}: {at}['nonfinite'] must be >= 0 (got {bad})")
    return (
        _number(api, f"{at}['grad_norm']", entry.get("grad_norm")),
        _number(api, f"{at}['param_norm']", entry.get("param_norm")),
        _number(api, f"{at}['update_ratio']", entry.get("update_ratio")),
        bad,
    )


def _read(api: str, records: Any, title: Any, source: Any) -> _Run:
    """Check every record and gather the columns, in one pass after a stable sort by step."""
    _text(api, "title", title)
    _text(api, "source", source, optional=True)
    if not isinstance(records, Sequence) or isinstance(records, str | bytes):
        raise ArgumentTypeError(
            f"{api}: records must be a list of dicts, one per recorded step (got {type(records).__name__}: "
            f"{describe(records)}); read a JSONL log with gradwise.doctor's read_jsonl"
        )
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise ArgumentTypeError(
                f"{api}: records[{i}] must be a dict with an int 'step' (got {type(rec).__name__}: {describe(rec)})"
            )
        if "step" not in rec:
            keys = ", ".join(map(str, rec)) or "none"
            raise ArgumentError(f"{api}: records[{i}] has no 'step' (keys: {keys})")
        step = rec["step"]
        if isinstance(step, bool) or not isinstance(step, numbers.Integral):
            raise ArgumentTypeError(
                f"{api}: records[{i}]['step'] must be an int (got {type(step).__name__}: {describe(step)})"
            )
        if step < 0:
            raise ArgumentError(f"{api}: records[{i}]['step'] must be >= 0 (got {step})")
    order = sorted(range(len(records)), key=lambda i: records[i]["step"])  # stable: optimizers keep their order
    run = _Run([], [], {}, {}, {}, [], 0, None)
    for i in order:
        rec = records[i]
        step = int(rec["step"])
        where = f"records[{i}]"
        loss = _number(api, f"{where}['loss']", rec.get("loss"))
        total = _number(api, f"{where}['grad_norm_total']", rec.get("grad_norm_total"))
        optimizer = _text(api, f"{where}['optimizer']", rec.get("optimizer"), optional=True) or "optimizer"
        opt = run.optimizers.setdefault(optimizer, _OptimizerColumn(optimizer))
        opt.steps.append(step)
        opt.total.append(total)
        opt.loss.append(loss)
        bad_here: str | None = None
        for name, entry in _mapping(api, f"{where}['params']", rec.get("params"), "parameter entries").items():
            if type(name) is str and type(entry) is dict:  # the common case, checked without building messages
                g, w, r = entry.get("grad_norm"), entry.get("param_norm"), entry.get("update_ratio")
                bad = entry.get("nonfinite")
                plain = type(g) in _PLAIN and type(w) in _PLAIN and type(r) in _PLAIN and type(bad) in _PLAIN_INT
                plain = plain and (bad is None or bad >= 0)
            else:
                plain = False
            if not plain:
                g, w, r, bad = _param_entry(api, f"{where}['params']", name, entry)
            col = run.params.get(name)
            if col is None:
                col = run.params[name] = _Column(name)
            bad = bad or 0
            col.steps.append(step)
            col.grad.append(g)
            col.weight.append(w)
            col.ratio.append(r)
            col.nonfinite.append(bad)
            if bad_here is None and (bad > 0 or (g is not None and not math.isfinite(g))):
                bad_here = name
        for name, entry in _mapping(api, f"{where}['modules']", rec.get("modules"), "module entries").items():
            at = f"{where}['modules'][{name!r}]"
            entry = _mapping(api, at, entry, "fractions")
            mod = run.modules.get(name)
            if mod is None:
                mod = run.modules[name] = _ModuleColumn(str(name))
            mod.steps.append(step)
            mod.dead.append(_number(api, f"{at}['dead_fraction']", entry.get("dead_fraction")))
            mod.saturated.append(_number(api, f"{at}['saturated_fraction']", entry.get("saturated_fraction")))
        found = rec.get("findings") or []
        if not isinstance(found, list | tuple):
            raise ArgumentTypeError(
                f"{api}: {where}['findings'] must be a list of finding dicts (got {type(found).__name__}: "
                f"{describe(found)})"
            )
        run.findings.extend(_finding(api, f"{where}['findings'][{j}]", f, step) for j, f in enumerate(found))
        if bad_here is not None:
            run.nonfinite_records += 1
            if run.first_nonfinite is None:
                run.first_nonfinite = (step, bad_here)
        run.records.append(rec)
        run.steps.append(step)
    run.findings.sort(key=lambda f: (_SEVERITY_ORDER[f.severity], f.step if f.step is not None else -1))
    return run


# ----------------------------------------------------------------------------------------------
# Numbers, scales and ticks


def _fmt(v: float | None) -> str:
    if v is None:
        return "–"
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == 0:
        return "0"
    if 1e-3 <= abs(v) < 1e5:
        return f"{v:.4g}"
    mantissa, exponent = f"{v:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _decade(e: int) -> str:
    return {-1: "0.1", 0: "1", 1: "10", 2: "100"}.get(e, f"1e{e}")


def _c(x: float) -> str:
    """A coordinate, to a tenth of a unit."""
    return f"{x:.1f}".removesuffix(".0")


@dataclass(frozen=True)
class _Scale:
    """Data to pixels; on a log scale ``lo`` and ``hi`` are decades and values below ``10**lo`` sit on the floor."""

    lo: float
    hi: float
    p_lo: float
    p_hi: float
    log: bool

    @property
    def floor(self) -> float:
        return 10.0**self.lo if self.log else -math.inf

    def clipped(self, v: float) -> bool:
        return self.log and v < self.floor

    def __call__(self, v: float) -> float:
        t = (math.log10(v) if v > 0 else self.lo) if self.log else v
        t = min(max(t, self.lo), self.hi)
        return self.p_lo + (t - self.lo) / (self.hi - self.lo) * (self.p_hi - self.p_lo)

    def ticks(self) -> list[tuple[float, str]]:
        if self.log:
            lo, hi = int(self.lo), int(self.hi)
            every = max(1, math.ceil((hi - lo) / 7))
            return [(10.0**e, _decade(e)) for e in range(hi, lo - 1, -every)][::-1]
        step = _nice((self.hi - self.lo) / 5)
        first = math.ceil(self.lo / step - 1e-9)
        ticks = []
        for k in range(first, first + 12):
            v = k * step
            if v > self.hi + step * 1e-9:
                break
            ticks.append((v, _tick_label(v, step)))
        return ticks


def _nice(raw: float) -> float:
    if not raw > 0 or not math.isfinite(raw):
        return 1.0
    base = 10.0 ** math.floor(math.log10(raw))
    return next(m * base for m in (1, 2, 2.5, 5, 10) if m * base >= raw * 0.999)


def _tick_label(v: float, step: float) -> str:
    if abs(v) < step * 1e-6:
        return "0"
    if abs(v) >= 1e5 or step < 1e-3:
        return _fmt(v)
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) + (1 if f"{step:g}".startswith("2.5") else 0)
    return f"{v:.{decimals}f}"


def _log_range(values: Iterable[float | None]) -> tuple[int, int]:
    """Decades that hold every positive finite value; one more below when some values are zero (to mark them)."""
    smallest, largest, low = math.inf, 0.0, False
    for v in values:
        if v is None or not math.isfinite(v):
            continue
        if v > 0:
            smallest, largest = min(smallest, v), max(largest, v)
        else:
            low = True
    if largest == 0:
        return (-3, 1) if not low else (-1, 0)
    lo, hi = math.floor(math.log10(smallest)), math.floor(math.log10(largest)) + 1  # headroom over a power of 10
    if low:
        lo -= 1
    return max(lo, hi - _MAX_DECADES), hi


def _linear_range(values: Iterable[float | None]) -> tuple[float, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    if lo == hi:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    step = _nice((hi - lo) / 5)
    return math.floor(lo / step) * step, math.ceil(hi / step) * step


# ----------------------------------------------------------------------------------------------
# Drawing


@dataclass
class _Series:
    label: str
    steps: list[int]
    values: list[float | None]
    colour: str
    nonfinite: list[int] | None = None  # non-finite gradient entries at each point, where known
    dash: str = ""
    width: float = 1.6
    hover: str = ""  # the full name, when label is shortened

    @property
    def name(self) -> str:
        return self.hover or self.label


@dataclass(frozen=True)
class _Mark:
    """A vertical line at a step with findings, linking to its row."""

    step: int
    colour: str
    text: str


def _short(name: str, limit: int = _LABEL_CHARS) -> str:
    if len(name) <= limit:
        return name
    keep = limit - 1
    return name[: keep // 2] + "…" + name[-(keep - keep // 2) :]


def _polyline(points: Sequence[tuple[float, float]], s: _Series, attrs: str = "") -> str:
    coords = " ".join(f"{_c(x)},{_c(y)}" for x, y in points)
    dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
    return (
        f'<polyline points="{coords}" fill="none" stroke="{s.colour}" stroke-width="{s.width}"{dash} '
        f'stroke-linejoin="round" stroke-linecap="round"{attrs}><title>{_e(s.name)}</title></polyline>'
    )


def _cross(x: float, y: float, size: float = 4.0) -> str:
    a, b, c, d = _c(x - size), _c(x + size), _c(y - size), _c(y + size)
    return f"M{a} {c}L{b} {d}M{a} {d}L{b} {c}"


def _nonfinite_marker(x1: float, x2: float, text: str) -> str:
    bar = (
        f'<line x1="{_c(x1)}" y1="{_BAND_Y}" x2="{_c(x2)}" y2="{_BAND_Y}" stroke="{_NONFINITE}" stroke-width="3" '
        'stroke-opacity="0.6"/>'
        if x2 - x1 > 1
        else ""
    )
    return (
        f'<g class="gw-nf"><title>{_e(text)}</title>{bar}<path d="{_cross(x1, _BAND_Y)}" stroke="{_NONFINITE}" '
        'stroke-width="2" fill="none"/></g>'
    )


def _floor_marker(x1: float, x2: float, y: float, colour: str, text: str) -> str:
    bar = (
        f'<line x1="{_c(x1)}" y1="{_c(y - 1.5)}" x2="{_c(x2)}" y2="{_c(y - 1.5)}" stroke="{colour}" stroke-width="3" '
        'stroke-opacity="0.5"/>'
        if x2 - x1 > 1
        else ""
    )
    tri = f"M{_c(x1 - 4)} {_c(y - 8)}L{_c(x1 + 4)} {_c(y - 8)}L{_c(x1)} {_c(y)}Z"
    return f'<g class="gw-floor"><title>{_e(text)}</title>{bar}<path d="{tri}" fill="white" stroke="{colour}"/></g>'


def _kinds(values: Iterable[float | None], entries: int) -> str:
    names = []
    for v in values:
        name = "NaN" if v is not None and math.isnan(v) else (_fmt(v) if v is not None and math.isinf(v) else None)
        if name is not None and name not in names:
            names.append(name)
    if not names:
        names.append("a finite norm")
    text = " and ".join(names)
    if entries:
        text += f" ({entries} non-finite gradient entr{'y' if entries == 1 else 'ies'})"
    return text


def _thin(points: Sequence[tuple[int, float, int, float]], keep: set[int], limit: int) -> list[int]:
    """Indices of ``points`` (step, position, stretch, value) to draw: all when few; else the smallest and largest
    of each bucket, the points at steps in ``keep``, and both ends of every unbroken stretch."""
    n = len(points)
    if n <= limit:
        return list(range(n))
    chosen = {0, n - 1}
    for i in range(1, n):
        if points[i][2] != points[i - 1][2]:
            chosen.update((i - 1, i))
    chosen.update(i for i, p in enumerate(points) if p[0] in keep)
    buckets = max(1, limit // 2)
    for b in range(buckets):
        lo, hi = n * b // buckets, n * (b + 1) // buckets
        if lo < hi:
            chosen.add(min(range(lo, hi), key=lambda i: points[i][1]))
            chosen.add(max(range(lo, hi), key=lambda i: points[i][1]))
    return sorted(chosen)


class _Canvas:
    """One SVG plot: a data area between ``top`` and ``bottom``, ``left`` and ``right``."""

    def __init__(self, height: int, bottom_margin: int, label: str):
        self.height = height
        self.top, self.bottom = _TOP, height - bottom_margin
        self.left, self.right = _LEFT, _W - _RIGHT
        self.label = label
        self.parts: list[str] = []

    def add(self, part: str) -> None:
        self.parts.append(part)

    def y_axis(self, ys: _Scale, label: str) -> None:
        for v, text in ys.ticks():
            y = _c(ys(v))
            self.add(f'<line x1="{self.left}" y1="{y}" x2="{self.right}" y2="{y}" stroke="#e4e4e4"/>')
            self.add(f'<text x="{self.left - 6}" y="{y}" text-anchor="end" dominant-baseline="middle">{text}</text>')
        mid = (self.top + self.bottom) / 2
        self.add(
            f'<text x="16" y="{_c(mid)}" text-anchor="middle" transform="rotate(-90 16 {_c(mid)})" '
            f'class="gw-axis">{_e(label)}</text>'
        )

    def frame(self) -> None:
        self.add(
            f'<rect x="{self.left}" y="{self.top}" width="{self.right - self.left}" height="{self.bottom - self.top}" '
            'fill="none" stroke="#999"/>'
        )

    def band_label(self) -> None:
        self.add(
            f'<text x="{self.left - 6}" y="{_BAND_Y}" text-anchor="end" dominant-baseline="middle" '
            f'fill="{_NONFINITE}" class="gw-nflabel">NaN/Inf</text>'
        )

    def svg(self) -> str:
        return (
            f'<svg class="gw-plot" viewBox="0 0 {_W} {self.height}" role="img" aria-label="{_e(self.label)}">'
            + "".join(self.parts)
            + "</svg>"
        )


def _step_scale(run: _Run, canvas: _Canvas) -> _Scale:
    first, last = run.steps[0], run.steps[-1]
    if first == last:
        first, last = first - 1, last + 1
    return _Scale(first, last, canvas.left + 6, canvas.right - 6, log=False)


def _step_ticks(xs: _Scale) -> list[int]:
    step = max(1, int(_nice((xs.hi - xs.lo) / 8)))
    return [k for k in range(math.ceil(xs.lo / step) * step, int(xs.hi) + 1, step) if k >= 0]


def _steps_plot(
    run: _Run,
    series: Sequence[_Series],
    *,
    log: bool,
    y_label: str,
    label: str,
    marks: Sequence[_Mark],
    fixed: tuple[float, float] | None = None,
    reference: tuple[float, str, str] | None = None,  # value, hover text, label
    height: int = 300,
) -> str:
    """A plot over steps of ``series``, each thinned to about :data:`_MAX_POINTS` points."""
    canvas = _Canvas(height, 44, label)
    every = [v for s in series for v in s.values]
    if reference is not None:
        every.append(reference[0])
    if log:
        lo, hi = _log_range(every)
    else:
        lo, hi = fixed if fixed is not None else _linear_range(every)
    ys = _Scale(lo, hi, canvas.bottom, canvas.top + 4, log=log)
    xs = _step_scale(run, canvas)
    canvas.y_axis(ys, y_label)
    for k in _step_ticks(xs):
        x = _c(xs(k))
        canvas.add(f'<line x1="{x}" y1="{canvas.bottom}" x2="{x}" y2="{canvas.bottom + 4}" stroke="#999"/>')
        canvas.add(f'<text x="{x}" y="{canvas.bottom + 17}" text-anchor="middle">{k}</text>')
    canvas.add(
        f'<text x="{(canvas.left + canvas.right) // 2}" y="{height - 6}" text-anchor="middle" class="gw-axis">'
        "optimizer step</text>"
    )
    if reference is not None:
        y = _c(ys(reference[0]))
        canvas.add(
            f'<g><title>{_e(reference[1])}</title><line x1="{canvas.left}" y1="{y}" x2="{canvas.right}" y2="{y}" '
            'stroke="#555" stroke-width="1.2" stroke-dasharray="6 4"/></g>'
        )
    keep = {m.step for m in marks}
    for m in marks:
        x = _c(xs(m.step))
        canvas.add(
            f'<a href="#step-{m.step}" class="gw-mark"><title>{_e(m.text)}</title>'
            f'<line x1="{x}" y1="{canvas.top}" x2="{x}" y2="{canvas.bottom}" stroke="{m.colour}" stroke-width="1.2" '
            'stroke-dasharray="3 3"/>'
            f'<line x1="{x}" y1="{canvas.top}" x2="{x}" y2="{canvas.bottom}" stroke="transparent" stroke-width="9"/>'
            f'<path d="M{_c(xs(m.step) - 5)} {canvas.top}L{_c(xs(m.step) + 5)} {canvas.top}L{x} {canvas.top + 7}Z" '
            f'fill="{m.colour}"/></a>'
        )
    markers: list[str] = []
    any_nonfinite = False
    for s in series:
        points: list[tuple[int, float, int, float]] = []  # step, y, stretch, value
        stretch = 0
        bad_runs: list[list[Any]] = []  # [first index, last index, values, entries]
        low_runs: list[list[Any]] = []
        for i, (step, v) in enumerate(zip(s.steps, s.values, strict=True)):
            entries = s.nonfinite[i] if s.nonfinite is not None else 0
            finite = v is not None and math.isfinite(v)
            if (v is not None and not finite) or entries:
                if bad_runs and bad_runs[-1][1] == i - 1:
                    bad_runs[-1][1] = i
                    bad_runs[-1][2].append(v)
                    bad_runs[-1][3] += entries
                else:
                    bad_runs.append([i, i, [v], entries])
            if v is None or not finite:
                stretch += 1
                continue
            if ys.clipped(v):
                if low_runs and low_runs[-1][1] == i - 1:
                    low_runs[-1][1] = i
                    low_runs[-1][3] = low_runs[-1][3] and v == low_runs[-1][2]
                else:
                    low_runs.append([i, i, v, True])
            points.append((step, ys(v), stretch, v))
        drawn = [points[i] for i in _thin(points, keep, _MAX_POINTS)]
        pieces: list[list[tuple[int, float, int, float]]] = []
        for p in drawn:
            if pieces and pieces[-1][-1][2] == p[2]:
                pieces[-1].append(p)
            else:
                pieces.append([p])
        for piece in pieces:
            if len(piece) > 1:
                canvas.add(_polyline([(xs(p[0]), p[1]) for p in piece], s))
        few = len(drawn) <= 40
        for piece in pieces:
            for p in piece if few or len(piece) == 1 else ():
                canvas.add(
                    f'<circle cx="{_c(xs(p[0]))}" cy="{_c(p[1])}" r="{2.6 if len(piece) == 1 else 2}" '
                    f'fill="{s.colour}"><title>{_e(s.name)} at step {p[0]}: {_fmt(p[3])}</title></circle>'
                )
        for first, last, values, entries in bad_runs:
            a, b = s.steps[first], s.steps[last]
            where = f"step {a}" if first == last else f"steps {a}–{b} ({last - first + 1} records)"
            markers.append(_nonfinite_marker(xs(a), xs(b), f"{s.name} at {where}: {_kinds(values, entries)}"))
            any_nonfinite = True
        for first, last, value, same in low_runs:
            a, b = s.steps[first], s.steps[last]
            where = f"step {a}" if first == last else f"steps {a}–{b} ({last - first + 1} records)"
            what = _fmt(value) if same else "values"
            text = f"{s.name} at {where}: {what} (below {_fmt(ys.floor)}, drawn on the axis floor)"
            markers.append(_floor_marker(xs(a), xs(b), canvas.bottom, s.colour, text))
    canvas.frame()
    if any_nonfinite:
        canvas.band_label()
    for m in markers:
        canvas.add(m)
    if reference is not None:  # its label over the lines, on a white box
        width = 6.2 * len(reference[2]) + 8
        x, y = canvas.right - 4 - width, ys(reference[0])
        canvas.add(
            f'<g><title>{_e(reference[1])}</title><rect x="{_c(x)}" y="{_c(y - 8)}" width="{_c(width)}" height="16" '
            f'rx="3" fill="white" stroke="#555" stroke-width="0.8"/><text x="{_c(x + width / 2)}" y="{_c(y)}" '
            f'text-anchor="middle" dominant-baseline="middle" class="gw-ref">{_e(reference[2])}</text></g>'
        )
    return canvas.svg()


def _legend(series: Sequence[_Series], extra: Sequence[tuple[str, str, str]] = ()) -> str:
    """An HTML legend: a swatch drawn like the line, and the label (the full name on hover)."""
    items = []
    for colour, dash, text, hover in [(s.colour, s.dash, s.label, s.name) for s in series] + [
        (c, d, t, t) for c, d, t in extra
    ]:
        d = f' stroke-dasharray="{dash}"' if dash else ""
        items.append(
            f'<span class="gw-key" title="{_e(hover)}"><svg width="26" height="10" aria-hidden="true">'
            f'<line x1="1" y1="5" x2="25" y2="5" stroke="{colour}" stroke-width="2.4"{d}/></svg>{_e(text)}</span>'
        )
    return f'<div class="gw-legend">{"".join(items)}</div>'


# ----------------------------------------------------------------------------------------------
# Sections


def _marks(run: _Run) -> list[_Mark]:
    by_step: dict[int, list[_Finding]] = {}
    for f in run.findings[:_MAX_FINDINGS]:
        at = run.anchor(f)
        if at is not None:
            by_step.setdefault(at, []).append(f)
    marks = []
    for step, found in sorted(by_step.items()):
        worst = min(found, key=lambda f: _SEVERITY_ORDER[f.severity])
        text = f"step {step}: " + "; ".join(f"{f.kind} ({f.severity})" for f in found) + " (click for the step's row)"
        marks.append(_Mark(step, _SEVERITY_COLOUR[worst.severity], text))
    return marks


def _header(run: _Run, title: str, source: str | None) -> str:
    parts = [f'<header class="gw-head"><h1>{_e(title)}</h1><div class="gw-meta">']
    meta = []
    if source is not None:
        meta.append(f"source <code>{_e(source)}</code>")
    if run.records:
        first, last = run.steps[0], run.steps[-1]
        span = f"step {first}" if first == last else f"steps {first}–{last}"
        meta.append(f"{span} ({len(run.records)} record{'s' if len(run.records) != 1 else ''})")
        meta.append(f"{len(run.params)} parameter{'s' if len(run.params) != 1 else ''}")
        meta.append(f"{len(run.modules)} module{'s' if len(run.modules) != 1 else ''} with activation statistics")
        names = ", ".join(f"<code>{_e(o)}</code>" for o in run.optimizers)
        meta.append(f"optimizer{'s' if len(run.optimizers) != 1 else ''} {names}")
    parts.append(" · ".join(f"<span>{m}</span>" for m in meta))
    parts.append("</div>")
    if not run.records:
        parts.append('<p class="gw-verdict gw-quiet">Nothing was recorded: the log holds no step.</p></header>')
        return "".join(parts)
    n = len(run.findings)
    if n:
        listed = []
        for f in run.findings[:3]:
            at = run.anchor(f)
            where = f'at <a href="#step-{at}">step {at}</a>' if at is not None else "over the run"
            listed.append(f"{_e(f.kind)} {where}")
        more = f", and {n - 3} more" if n > 3 else ""
        worst = run.findings[0].severity
        cls = {"error": "gw-bad", "warning": "gw-warn"}.get(worst, "gw-info")
        parts.append(f'<p class="gw-verdict {cls}">{n} alert{"s" if n != 1 else ""}: {", ".join(listed)}{more}.</p>')
    else:
        records = len(run.records)
        parts.append(
            f'<p class="gw-verdict gw-ok">No alerts over {records} recorded step{"s" if records != 1 else ""}.</p>'
        )
    if run.first_nonfinite is not None:
        step, name = run.first_nonfinite
        parts.append(
            f'<p class="gw-verdict gw-bad">NaN/Inf gradients in {run.nonfinite_records} record'
            f'{"s" if run.nonfinite_records != 1 else ""}, the first at <a href="#step-{step}">step {step}</a> '
            f"(<code>{_e(name)}</code>).</p>"
        )
    nav = [("gw-findings", "Findings"), ("gw-flow", "Gradient flow"), ("gw-steps", "Over steps")]
    nav += [("gw-modules", "Dead / saturated"), ("gw-loss", "Loss"), ("gw-table", "Steps")]
    parts.append('<nav class="gw-nav">' + " · ".join(f'<a href="#{i}">{t}</a>' for i, t in nav) + "</nav>")
    parts.append("</header>")
    return "".join(parts)


def _findings_section(run: _Run) -> str:
    parts = [f'<section><h2 id="gw-findings">Findings ({len(run.findings)})</h2>']
    if not run.findings:
        parts.append('<p class="gw-note">The monitor raised no finding.</p></section>')
        return "".join(parts)
    for k, f in enumerate(run.findings[:_MAX_FINDINGS]):
        at = run.anchor(f)
        head = [f'<span class="gw-badge gw-{f.severity}">{f.severity}</span>', f'<b class="gw-kind">{_e(f.kind)}</b>']
        if at is not None:
            raised = f" (seen at step {f.raised_at})" if f.step != at else ""
            head.append(f'<a href="#step-{at}">step {at}</a>{raised}')
        else:
            head.append('<span class="gw-note">over the whole run</span>')
        if f.file:
            head.append(f"<code>{_e(f.file)}{':' + str(f.line) if f.line is not None else ''}</code>")
        body = [f'<p class="gw-msg">{_e(f.message)}</p>']
        if f.fix:
            body.append(f'<p class="gw-fix"><b>Fix:</b> {_e(f.fix)}</p>')
        if f.parameters:
            shown = ", ".join(f"<code>{_e(p)}</code>" for p in f.parameters[:8])
            more = f" (+{len(f.parameters) - 8} more)" if len(f.parameters) > 8 else ""
            body.append(f'<p class="gw-params">Parameters: {shown}{more}</p>')
        if f.data:
            figures = json.dumps(dict(f.data), default=str, indent=1)
            if len(figures) > 2000:
                figures = figures[:2000] + "\n…"
            body.append(f"<details><summary>figures</summary><pre>{_e(figures)}</pre></details>")
        parts.append(
            f'<div class="gw-finding gw-{f.severity}-edge" id="finding-{k}"><div class="gw-fhead">'
            + " ".join(head)
            + "</div>"
            + "".join(body)
            + "</div>"
        )
    if len(run.findings) > _MAX_FINDINGS:
        rest: dict[str, int] = {}
        for f in run.findings[_MAX_FINDINGS:]:
            rest[f.kind] = rest.get(f.kind, 0) + 1
        counts = ", ".join(f"{_e(kind)} × {n}" for kind, n in rest.items())
        parts.append(f'<p class="gw-note">{len(run.findings) - _MAX_FINDINGS} more not shown: {counts}.</p>')
    parts.append("</section>")
    return "".join(parts)


def _flow_steps(run: _Run) -> tuple[list[int], dict[int, str], int]:
    """The steps drawn in the gradient flow, those with a finding, and how many finding steps are left out."""
    unique = sorted(set(run.steps))
    chosen = {unique[0], unique[-1]}
    if len(unique) > 2:
        chosen.update(unique[round(k * (len(unique) - 1) / 5)] for k in range(1, 5))
    if run.first_nonfinite is not None:
        chosen.add(run.first_nonfinite[0])
    with_finding: dict[int, str] = {}  # step -> its most severe finding's severity
    for f in run.findings:  # most severe first
        if (a := run.anchor(f)) is not None:
            with_finding.setdefault(a, f.severity)
    room = max(0, _MAX_FLOW_LINES - len(chosen))
    extra = sorted(s for s in with_finding if s not in chosen)
    chosen.update(extra[:room])
    return sorted(chosen), with_finding, max(0, len(extra) - room)


def _flow_section(run: _Run) -> str:
    parts = ['<section><h2 id="gw-flow">Gradient flow</h2>']
    names = list(run.params)
    if not names:
        parts.append('<p class="gw-note">No parameter was recorded.</p></section>')
        return "".join(parts)
    steps, with_finding, left_out = _flow_steps(run)
    n = len(names)
    bias = [name.endswith(".bias") for name in names]
    joined = [i for i in range(n) if not bias[i]] or list(range(n))  # the lines join the weights; biases are dots
    label_chars = _LABEL_CHARS if n <= 60 else 22
    bottom_margin = 24 + int(min(label_chars, max(len(_short(m, label_chars)) for m in names)) * 4.6)
    canvas = _Canvas(300 + bottom_margin, bottom_margin, "gradient norm per parameter, in model order")
    cols = [run.params[m] for m in names]
    lo, hi = _log_range(v for c in cols for v in c.grad)
    ys = _Scale(lo, hi, canvas.bottom, canvas.top + 4, log=True)
    width = (canvas.right - canvas.left) / n

    def x(i: int) -> float:
        return canvas.left + (i + 0.5) * width

    canvas.y_axis(ys, "gradient norm")
    every = max(1, math.ceil(n / 48))
    for i, name in enumerate(names):
        if i % every and i != n - 1:
            continue
        xi, y0 = _c(x(i)), canvas.bottom + 8
        cls = ' class="gw-bias"' if bias[i] else ""
        canvas.add(
            f'<text x="{xi}" y="{y0}" text-anchor="end" transform="rotate(-40 {xi} {y0})"{cls}>'
            f"<title>{_e(name)}</title>{_e(_short(name, label_chars))}</text>"
        )
    # the range over all recorded steps: a grey band behind the lines
    upper, lower = [], []
    for i in joined:
        finite = [v for v in cols[i].grad if v is not None and math.isfinite(v)]
        if finite:
            upper.append((x(i), ys(max(finite))))
            lower.append((x(i), ys(min(finite))))
    if len(upper) > 1 and len(run.records) > 1:
        outline = " ".join(f"{_c(px)},{_c(py)}" for px, py in upper + lower[::-1])
        canvas.add(
            f'<polygon points="{outline}" fill="#d9d9d9" fill-opacity="0.55" stroke="none">'
            f"<title>range over all {len(run.records)} recorded steps</title></polygon>"
        )
    series = []
    markers: list[str] = []
    dots = n <= 60
    plain = [step for step in steps if step not in with_finding]
    for step in steps:
        if step in with_finding:  # in the colour of its finding's severity, dashed
            s = _Series(f"step {step} ({with_finding[step]})", [], [], _SEVERITY_COLOUR[with_finding[step]], dash="6 3")
        else:  # early to late, dark to light
            k = plain.index(step)
            colour = _SEQUENTIAL[round(k * (len(_SEQUENTIAL) - 1) / max(1, len(plain) - 1))]
            s = _Series(f"step {step}", [], [], colour)
        s.width = 2.0
        colour = s.colour
        series.append(s)
        values: list[float | None] = []
        for c in cols:
            j = c.index(step)
            values.append(None if j is None else c.grad[j])
            if j is not None and (c.nonfinite[j] or (c.grad[j] is not None and not math.isfinite(c.grad[j]))):
                markers.append(
                    _nonfinite_marker(
                        x(len(values) - 1),
                        x(len(values) - 1),
                        f"{c.name} at step {step}: {_kinds([c.grad[j]], c.nonfinite[j])}",
                    )
                )
        line: list[tuple[float, float]] = []
        for i in joined:
            v = values[i]
            if v is None or not math.isfinite(v):
                if len(line) > 1:
                    canvas.add(_polyline(line, s, f' data-step="{step}"'))
                line = []
                continue
            line.append((x(i), ys(v)))
        if len(line) > 1:
            canvas.add(_polyline(line, s, f' data-step="{step}"'))
        elif line:
            canvas.add(f'<circle cx="{_c(line[0][0])}" cy="{_c(line[0][1])}" r="2.6" fill="{colour}"/>')
        for i, v in enumerate(values):
            if v is None or not math.isfinite(v):
                continue
            if bias[i] or dots:
                hollow = bias[i] and len(joined) < n
                fill = "white" if hollow else colour
                canvas.add(
                    f'<circle cx="{_c(x(i))}" cy="{_c(ys(v))}" r="{2.8 if hollow else 2}" fill="{fill}" '
                    f'stroke="{colour}"><title>{_e(names[i])} at step {step}: {_fmt(v)}</title></circle>'
                )
            if ys.clipped(v):
                markers.append(
                    _floor_marker(
                        x(i),
                        x(i),
                        canvas.bottom,
                        colour,
                        f"{names[i]} at step {step}: {_fmt(v)} (below {_fmt(ys.floor)}, drawn on the axis floor)",
                    )
                )
    canvas.frame()
    if any("gw-nf" in m for m in markers):
        canvas.band_label()
    for m in markers:
        canvas.add(m)
    note = (
        "Each line is one step: x is the parameter in model order (the first layer on the left), y its gradient "
        "norm (log scale). A line that falls towards the left means gradients vanish before they reach the first "
        "layers; a jump up means they explode. A red cross at the top is a NaN/Inf. "
    )
    if len(joined) < n:
        note += "Biases are hollow dots (grey labels), off the lines. "
    if len(run.records) > 1:
        note += f"The grey band is the range over all {len(run.records)} recorded steps."
    if left_out:
        note += f" {left_out} more step(s) with a finding are not drawn."
    parts.append(f'<p class="gw-note">{note}</p>{canvas.svg()}{_legend(series)}</section>')
    return "".join(parts)


def _combine(row: Iterable[tuple[Any, Any, Any, int]]) -> tuple[float | None, float | None, float | None, int]:
    """(grad norm, weight norm, update ratio, non-finite entries) of a layer from its parameters': the norm of the
    parameters' gradients together, and ||Δw|| / ||w|| over all its weights; NaN or Inf when one of them is."""
    sq = upd = wsq = 0.0
    bad = 0
    worst = ratio_worst = None
    have_g = have_r = False
    for g, w, r, b in row:
        bad += b
        if g is not None:
            have_g = True
            if math.isfinite(g):
                sq += g * g
            elif worst is None or math.isnan(g):
                worst = g
        if r is not None and w is not None:
            have_r = True
            if math.isfinite(r) and math.isfinite(w):
                upd += (r * w) ** 2
                wsq += w * w
            elif ratio_worst is None or math.isnan(r) or math.isnan(w):
                ratio_worst = math.nan if math.isnan(r) or math.isnan(w) else math.inf
    grad = (worst if worst is not None else math.sqrt(sq)) if have_g else None
    if not have_r:
        return grad, None, None, bad
    ratio = ratio_worst if ratio_worst is not None else (math.sqrt(upd / wsq) if wsq > 0 else 0.0)
    return grad, math.sqrt(wsq), ratio, bad


def _groups(run: _Run, per_layer: bool) -> list[tuple[str, list[_Column]]]:
    """Each parameter alone, or the parameters grouped by the module that owns them (``a.b.weight`` -> ``a.b``)."""
    if not per_layer:
        return [(name, [col]) for name, col in run.params.items()]
    groups: dict[str, list[_Column]] = {}
    for name, col in run.params.items():
        groups.setdefault(name.rpartition(".")[0] or name, []).append(col)
    return list(groups.items())


def _merge(name: str, cols: list[_Column]) -> _Column:
    """One column for a layer: its parameters' norms combined step by step (see :func:`_combine`)."""
    if len(cols) == 1:
        c = cols[0]
        return _Column(name, c.steps, c.grad, c.weight, c.ratio, c.nonfinite)
    entries = [list(zip(c.grad, c.weight, c.ratio, c.nonfinite, strict=True)) for c in cols]
    if all(c.steps == cols[0].steps for c in cols):  # stepped together: the usual case
        steps, rows = cols[0].steps, list(zip(*entries, strict=True))
    else:
        by_step: dict[int, list[tuple[Any, Any, Any, int]]] = {}
        for c, column in zip(cols, entries, strict=True):
            for step, entry in zip(c.steps, column, strict=True):
                by_step.setdefault(step, []).append(entry)
        steps = sorted(by_step)
        rows = [tuple(by_step[step]) for step in steps]
    out = _Column(name, list(steps))
    for row in rows:
        g, w, r, bad = _combine(row)
        out.grad.append(g)
        out.weight.append(w)
        out.ratio.append(r)
        out.nonfinite.append(bad)
    return out


def _chosen(groups: list[tuple[str, list[_Column]]]) -> tuple[list[tuple[str, list[_Column]]], str]:
    """At most :data:`_MAX_LINES`, in model order: the first, the last, the first two to go non-finite, the one with
    the smallest peak gradient norm (of one of its parameters), then those with the largest."""
    usable = [(name, cols) for name, cols in groups if any(g is not None for c in cols for g in c.grad)]
    if len(usable) <= _MAX_LINES:
        return usable, ""

    def peak(group: tuple[str, list[_Column]]) -> float:
        return max((g for c in group[1] for g in c.grad if g is not None and math.isfinite(g)), default=-1.0)

    def first_bad(group: tuple[str, list[_Column]]) -> float:
        return min(
            next(
                (
                    s
                    for s, g, b in zip(c.steps, c.grad, c.nonfinite, strict=True)
                    if b or (g is not None and not math.isfinite(g))
                ),
                math.inf,
            )
            for c in group[1]
        )

    picked = [0, len(usable) - 1]
    broken = sorted(
        (i for i in range(len(usable)) if first_bad(usable[i]) < math.inf), key=lambda i: first_bad(usable[i])
    )
    picked += [i for i in broken if i not in picked][:2]
    smallest = min(range(len(usable)), key=lambda i: peak(usable[i]))  # a dead or vanishing one, when there is
    picked += [smallest] if smallest not in picked else []
    by_peak = sorted(range(len(usable)), key=lambda i: peak(usable[i]), reverse=True)
    picked += [i for i in by_peak if i not in picked][: _MAX_LINES - len(picked)]
    why = "the first, the last, the smallest and the largest by peak gradient norm"
    if broken:
        why += ", and the first to go NaN/Inf"
    return [usable[i] for i in sorted(picked)], f"{len(usable) - len(picked)} hidden; shown: {why}"


def _over_steps_section(run: _Run, marks: Sequence[_Mark]) -> str:
    parts = ['<section><h2 id="gw-steps">Over steps</h2>']
    per_layer = len(run.params) > _MAX_LINES
    units = _groups(run, per_layer)
    chosen, hidden = _chosen(units)
    picked = [_merge(name, cols) for name, cols in chosen]
    what = "layer" if per_layer else "parameter"
    series = []
    for k, u in enumerate(picked):
        colour = _PALETTE[k % len(_PALETTE)]
        dash = "" if k < len(_PALETTE) else "5 3"
        series.append(_Series(_short(u.name), u.steps, u.grad, colour, u.nonfinite, dash, hover=u.name))
    totals = []
    for k, opt in enumerate(run.optimizers.values()):
        label = "total" if len(run.optimizers) == 1 else f"total ({opt.name})"
        totals.append(
            _Series(_short(label), opt.steps, opt.total, "#000000", None, "" if k == 0 else "2 2", 2.4, label)
        )
    note = (
        f"Gradient norm of each {what} (log scale)"
        + (", the norm of its parameters' gradients together" if per_layer else "")
        + f", and the total over all parameters (black). {len(units)} {what}s"
        + (f": {_e(hidden)}." if hidden else ".")
        + " Dashed vertical lines mark steps with findings (click one for its row)."
    )
    parts.append(f'<h3>Gradient norms</h3><p class="gw-note">{note}</p>')
    if series or any(any(v is not None for v in t.values) for t in totals):
        parts.append(
            _steps_plot(
                run, series + totals, log=True, y_label="gradient norm", label="gradient norms over steps", marks=marks
            )
            + _legend(series + totals)
        )
    else:
        parts.append('<p class="gw-note">No gradient norm was recorded.</p>')
    ratios = [
        _Series(s.label, s.steps, u.ratio, s.colour, None, s.dash, hover=s.hover)
        for s, u in zip(series, picked, strict=True)
        if any(r is not None for r in u.ratio)
    ]
    parts.append(
        '<h3>Update / weight ratio</h3><p class="gw-note">‖Δw‖ / ‖w‖ of each '
        f"{what} at each step (log scale). About 1e-3 is the usual healthy rate; far below, the {what} barely "
        "learns; near 1 or above, each step rewrites it.</p>"
    )
    if ratios:
        parts.append(
            _steps_plot(
                run,
                ratios,
                log=True,
                y_label="update / weight",
                label="update ratios over steps",
                marks=marks,
                reference=(_REFERENCE_RATIO, "1e-3: a typical healthy update/weight ratio", "1e-3 healthy"),
            )
            + _legend(ratios, [("#555", "6 4", "1e-3 reference")])
        )
    else:
        parts.append('<p class="gw-note">No update ratio was recorded.</p>')
    parts.append("</section>")
    return "".join(parts)


def _modules_section(run: _Run, marks: Sequence[_Mark]) -> str:
    parts = ['<section><h2 id="gw-modules">Dead and saturated units</h2>']

    def peak(m: _ModuleColumn) -> float:
        values = [v for v in m.dead + m.saturated if v is not None and math.isfinite(v)]
        return max(values, default=-1.0)

    mods = [m for m in run.modules.values() if peak(m) >= 0 or any(v is not None for v in m.dead + m.saturated)]
    if not mods:
        parts.append('<p class="gw-note">No activation statistics were recorded.</p></section>')
        return "".join(parts)
    shown = mods
    if len(mods) > _MAX_MODULES:
        top = sorted(mods, key=peak, reverse=True)[:_MAX_MODULES]
        shown = [m for m in mods if m in top]
    series, keys = [], []
    for k, m in enumerate(shown):
        colour = _PALETTE[k % len(_PALETTE)]
        if any(v is not None for v in m.dead):
            series.append(_Series(_short(m.name), m.steps, m.dead, colour, hover=f"{m.name}: dead fraction"))
        if any(v is not None for v in m.saturated):
            series.append(
                _Series(_short(m.name), m.steps, m.saturated, colour, dash="5 3", hover=f"{m.name}: saturated fraction")
            )
        keys.append(_Series(_short(m.name), [], [], colour, hover=m.name))
    hidden = (
        f" {len(mods) - len(shown)} modules hidden (the {len(shown)} with the highest peak are shown)."
        if len(shown) < len(mods)
        else ""
    )
    parts.append(
        '<p class="gw-note">Fraction of each module\'s units that are dead (solid: &lt;= 0 for every sample of '
        "the step's batch) or saturated (dashed: in the flat tails of the activation), per step." + hidden + "</p>"
    )
    parts.append(
        _steps_plot(
            run,
            series,
            log=False,
            fixed=(0.0, 1.0),
            y_label="fraction of units",
            label="dead and saturated",
            marks=marks,
        )
        + _legend(keys, [("#555", "", "dead"), ("#555", "5 3", "saturated")])
    )
    parts.append("</section>")
    return "".join(parts)


def _loss_section(run: _Run, marks: Sequence[_Mark]) -> str:
    parts = ['<section><h2 id="gw-loss">Loss</h2>']
    opts = [o for o in run.optimizers.values() if any(v is not None for v in o.loss)]
    if not opts:
        parts.append('<p class="gw-note">No loss was recorded.</p></section>')
        return "".join(parts)
    finite = [v for o in opts for v in o.loss if v is not None and math.isfinite(v)]
    log = bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 100
    series = [
        _Series(
            _short("loss" if len(opts) == 1 else f"loss ({o.name})"),
            o.steps,
            o.loss,
            _PALETTE[k % len(_PALETTE)],
            hover="loss" if len(opts) == 1 else f"loss ({o.name})",
        )
        for k, o in enumerate(opts)
    ]
    parts.append(f'<p class="gw-note">The loss at each recorded step ({"log" if log else "linear"} scale).</p>')
    parts.append(
        _steps_plot(run, series, log=log, y_label="loss", label="loss over steps", marks=marks, height=260)
        + _legend(series)
    )
    parts.append("</section>")
    return "".join(parts)


def _table_rows(run: _Run) -> list[int]:
    """Indices of the records shown: the first and last, those with findings or the first NaN/Inf, a few between."""
    n = len(run.records)
    wanted = {run.steps[0], run.steps[-1]}
    wanted.update(a for f in run.findings[:_MAX_FINDINGS] if (a := run.anchor(f)) is not None)
    if run.first_nonfinite is not None:
        wanted.add(run.first_nonfinite[0])
    rows = {i for i in range(n) if run.steps[i] in wanted}
    rows.update(n * k // _TABLE_SPACED for k in range(_TABLE_SPACED))
    return sorted(rows)


def _table_section(run: _Run) -> str:
    rows = _table_rows(run)
    several = len(run.optimizers) > 1
    finding_index: dict[int, list[int]] = {}
    for k, f in enumerate(run.findings[:_MAX_FINDINGS]):
        at = run.anchor(f)
        if at is not None:
            finding_index.setdefault(at, []).append(k)
    head = ["step"] + (["optimizer"] if several else []) + ["loss", "total grad norm", "largest grad norm"]
    head += ["smallest grad norm", "largest update ratio", "NaN/Inf", "findings"]
    out = [
        f'<section><h2 id="gw-table">Steps</h2><p class="gw-note">{len(rows)} of {len(run.records)} records: the first '
        "and the last, those with findings or the first NaN/Inf, and a few evenly spaced.</p>"
        '<div class="gw-scroll"><table class="gw-table"><thead><tr>'
        + "".join(f"<th>{h}</th>" for h in head)
        + "</tr></thead><tbody>"
    ]
    anchored: set[int] = set()
    previous = -1
    for i in rows:
        rec = run.records[i]
        step = run.steps[i]
        if previous >= 0 and i > previous + 1:
            out.append(f'<tr class="gw-gap"><td colspan="{len(head)}">⋯ {i - previous - 1} records ⋯</td></tr>')
        previous = i
        ident = f' id="step-{step}"' if step not in anchored else ""
        anchored.add(step)
        params = rec.get("params") or {}
        grads = [(float(e["grad_norm"]), name) for name, e in params.items() if e and e.get("grad_norm") is not None]
        finite = [(g, name) for g, name in grads if math.isfinite(g)]
        ratios = [float(e["update_ratio"]) for e in params.values() if e and e.get("update_ratio") is not None]
        bad = [name for g, name in grads if not math.isfinite(g)]
        bad += [name for name, e in params.items() if e and e.get("nonfinite") and name not in bad]
        cells = [f"<td{ident}>{step}</td>"]
        if several:
            cells.append(f"<td>{_e(rec.get('optimizer') or 'optimizer')}</td>")
        loss = rec.get("loss")
        total = rec.get("grad_norm_total")
        cells.append(f'<td class="gw-num">{_fmt(None if loss is None else float(loss))}</td>')
        cells.append(f'<td class="gw-num">{_fmt(None if total is None else float(total))}</td>')
        for pick in (max, min):
            if finite:
                g, name = pick(finite)
                cells.append(
                    f'<td class="gw-num">{_fmt(g)} <span title="{_e(name)}">{_e(_short(name, 24))}</span></td>'
                )
            else:
                cells.append('<td class="gw-num">–</td>')
        cells.append(
            f'<td class="gw-num">{_fmt(max(ratios, key=lambda r: -1 if math.isnan(r) else r)) if ratios else "–"}</td>'
        )
        if bad:
            names = ", ".join(bad)
            cells.append(
                f'<td class="gw-nfcell" title="{_e(names)}">{len(bad)} param{"s" if len(bad) != 1 else ""}</td>'
            )
        else:
            cells.append("<td></td>")
        links = []
        if step not in {run.steps[j] for j in rows if j < i}:
            for k in finding_index.get(step, []):
                f = run.findings[k]
                links.append(f'<a href="#finding-{k}" class="gw-badge gw-{f.severity}">{_e(f.kind)}</a>')
        cells.append(f"<td>{' '.join(links)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div></section>")
    return "".join(out)


def _content(run: _Run, title: str, source: str | None) -> str:
    parts = [_header(run, title, source)]
    if run.records:
        marks = _marks(run)
        parts += [
            _findings_section(run),
            _flow_section(run),
            _over_steps_section(run, marks),
            _modules_section(run, marks),
            _loss_section(run, marks),
            _table_section(run),
        ]
    parts.append(
        '<footer class="gw-foot">gradwise monitor report: one self-contained file, no script; hover a line or a mark '
        "for its values.</footer>"
    )
    return "".join(parts)


_CSS = """
.gw-report{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1d1d1f;
background:#fff;max-width:1040px;margin:0 auto;padding:18px 24px 28px;line-height:1.45;font-size:14px;text-align:left}
.gw-report h1{font-size:23px;margin:0 0 4px;font-weight:650}
.gw-report h2{font-size:18px;margin:30px 0 6px;padding-bottom:4px;border-bottom:1px solid #ddd;font-weight:620}
.gw-report h3{font-size:15px;margin:18px 0 2px;font-weight:600}
.gw-report a{color:#1f5fa8}
.gw-report code,.gw-report pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;
font-size:12.5px}
.gw-report pre{background:#f6f6f6;padding:6px 8px;overflow:auto;max-height:260px;margin:4px 0}
.gw-report .gw-meta{color:#555}
.gw-report .gw-nav{margin:6px 0 0;font-size:13px}
.gw-report .gw-verdict{margin:10px 0 0;padding:8px 12px;border-radius:6px;font-weight:600;border-left:5px solid}
.gw-report .gw-ok{background:#eaf5ec;border-color:#117733}
.gw-report .gw-bad{background:#fbeaea;border-color:#b2182b}
.gw-report .gw-warn{background:#fdf3e0;border-color:#c97c00}
.gw-report .gw-info{background:#e9f0f8;border-color:#2166ac}
.gw-report .gw-quiet{background:#f2f2f2;border-color:#888}
.gw-report .gw-note{color:#555;font-size:13px;margin:2px 0 6px}
.gw-report .gw-finding{border:1px solid #e2e2e2;border-left:5px solid #888;border-radius:6px;padding:8px 12px;
margin:8px 0}
.gw-report .gw-error-edge{border-left-color:#b2182b}
.gw-report .gw-warning-edge{border-left-color:#c97c00}
.gw-report .gw-info-edge{border-left-color:#2166ac}
.gw-report .gw-fhead{display:flex;flex-wrap:wrap;gap:4px 10px;align-items:baseline}
.gw-report .gw-finding p{margin:4px 0}
.gw-report .gw-badge{display:inline-block;font-size:11px;font-weight:700;text-transform:uppercase;
letter-spacing:.04em;padding:1px 7px;border-radius:9px;color:#fff;text-decoration:none}
.gw-report a.gw-badge{text-transform:none;letter-spacing:0;font-weight:600}
.gw-report .gw-error{background:#b2182b}
.gw-report .gw-warning{background:#c97c00}
.gw-report .gw-info{background:#2166ac}
.gw-report .gw-verdict.gw-info{background:#e9f0f8}
.gw-report .gw-fix{color:#114d1f}
.gw-report .gw-params{color:#444;font-size:13px}
.gw-report svg.gw-plot{width:100%;height:auto;display:block;margin:4px 0 0}
.gw-report svg.gw-plot text{font-size:11px;fill:#444;font-family:inherit}
.gw-report svg.gw-plot text.gw-axis{font-size:12px;fill:#222}
.gw-report svg.gw-plot text.gw-bias{fill:#9a9a9a}
.gw-report svg.gw-plot text.gw-ref{fill:#333;font-style:italic}
.gw-report svg.gw-plot text.gw-nflabel{fill:#d00000;font-weight:600}
.gw-report svg.gw-plot a.gw-mark{cursor:pointer}
.gw-report .gw-legend{display:flex;flex-wrap:wrap;gap:3px 16px;font-size:12px;margin:4px 0 0 72px}
.gw-report .gw-key{display:inline-flex;align-items:center;gap:5px;white-space:nowrap}
.gw-report .gw-scroll{overflow-x:auto}
.gw-report table.gw-table{border-collapse:collapse;font-size:12.5px;width:100%}
.gw-report .gw-table th,.gw-report .gw-table td{padding:3px 8px;border-bottom:1px solid #eee;text-align:left;
vertical-align:top}
.gw-report .gw-table th{background:#f4f4f4;font-weight:600;white-space:nowrap}
.gw-report .gw-table td.gw-num{font-variant-numeric:tabular-nums;white-space:nowrap}
.gw-report .gw-table tr.gw-gap td{color:#999;text-align:center;font-size:11px;padding:0}
.gw-report .gw-table td.gw-nfcell{color:#d00000;font-weight:600}
.gw-report .gw-table td:target{background:#fff3b0}
.gw-report .gw-foot{margin-top:28px;color:#888;font-size:12px}
"""


# ----------------------------------------------------------------------------------------------
# Public functions


def render_html(
    records: Sequence[Mapping[str, Any]], *, title: str = "gradwise monitor", source: str | None = None
) -> str:
    """A complete HTML page of a monitored training run, in one self-contained file.

    Args:
        records: the monitor's records, one dict per recorded optimizer step, as its JSONL log reads
            back: ``{"step", "loss", "optimizer", "grad_norm_total", "params", "modules", "findings"}``.
            NaN and Inf values are drawn as marks, never dropped.
        title: the page's title.
        source: shown in the header (the script or the log's path), or None.

    Returns:
        The page, ``<!DOCTYPE html>`` to ``</html>``: inline SVG and CSS, no script, nothing fetched.

    Raises:
        ArgumentTypeError: ``records`` is not a list of dicts, or a field has the wrong type (the
            message names the record, e.g. ``records[3]['step']``, and what it holds).
        ArgumentError: a record has no ``step``, or a finding an unknown severity.

    Example:
        >>> from gradwise.doctor._html import render_html
        >>> entry = {"grad_norm": 0.5, "param_norm": 3.0, "update_ratio": 1e-3, "nonfinite": 0}
        >>> records = [{"step": s, "loss": 1 / s, "optimizer": "opt", "grad_norm_total": 0.5,
        ...             "params": {"fc.weight": entry}, "modules": {}, "findings": []} for s in (1, 2)]
        >>> page = render_html(records, source="train.py")
        >>> page.startswith("<!DOCTYPE html>"), "No alerts over 2 recorded steps" in page
        (True, True)
    """
    run = _read("render_html", records, title, source)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}body{{margin:0;background:#f3f4f6}}\n"
        ".gw-report{box-shadow:0 1px 4px rgba(0,0,0,.08);min-height:100vh}\n</style>\n</head>\n<body>\n"
        f'<div class="gw-report">{_content(run, title, source)}</div>\n</body>\n</html>\n'
    )


def render_fragment(
    records: Sequence[Mapping[str, Any]], *, title: str = "gradwise monitor", source: str | None = None
) -> str:
    """The content of :func:`render_html` as one ``<div>`` with its styles scoped to it, for a notebook's
    ``_repr_html_``; self-contained as the page is.

    Args:
        records: as for :func:`render_html`.
        title: the heading.
        source: shown in the header, or None.

    Returns:
        ``<div class="gw-report"><style>...</style>...</div>``.

    Raises:
        ArgumentTypeError, ArgumentError: as :func:`render_html`.

    Example:
        >>> from gradwise.doctor._html import render_fragment
        >>> render_fragment([]).startswith('<div class="gw-report">')
        True
    """
    run = _read("render_fragment", records, title, source)
    return f'<div class="gw-report"><style>{_CSS}</style>{_content(run, title, source)}</div>'
