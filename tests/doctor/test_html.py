"""The monitor's HTML report: one self-contained, well-formed file whose pictures map back to the records."""

from __future__ import annotations

import html
import itertools
import math
import re
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from gradwise.doctor._html import render_fragment, render_html
from gradwise.errors import ArgumentError, ArgumentTypeError, GradwiseError

NAN, INF = float("nan"), float("inf")
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def entry(grad: float | None, weight: float = 10.0, ratio: float | None = 1e-3, nonfinite: int = 0) -> dict:
    return {"grad_norm": grad, "param_norm": weight, "update_ratio": ratio, "nonfinite": nonfinite}


def record(step: int, grads: dict[str, float | None], *, loss: float | None = 1.0, findings: tuple = (), **kw: Any):
    """A record as the monitor writes it; the total computed here, the way the monitor defines it."""
    finite = [g for g in grads.values() if g is not None]
    total = NAN if any(math.isnan(g) for g in finite) else math.sqrt(sum(g * g for g in finite))
    return {
        "step": step,
        "loss": loss,
        "optimizer": kw.get("optimizer", "opt"),
        "grad_norm_total": total,
        "params": kw.get("params") or {name: entry(g) for name, g in grads.items()},
        "modules": kw.get("modules", {}),
        "findings": list(findings),
    }


def finding(step: int | None, kind: str = "nonfinite-gradient", severity: str = "error", **kw: Any) -> dict:
    return {
        "kind": kind,
        "severity": severity,
        "message": kw.get("message", f"{kind} at step {step}"),
        "file": kw.get("file", "train.py"),
        "line": kw.get("line", 42),
        "parameters": kw.get("parameters", ["fc1.weight"]),
        "fix": kw.get("fix", "clip the gradients"),
        "step": step,
        "data": kw.get("data", {}),
    }


def small_run() -> list[dict]:
    """Six steps of a three-layer model: a NaN at step 3 with its finding, a warning at step 5, activations."""
    names = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias")
    records = []
    for step in range(1, 7):
        grads = {name: 10.0 ** (-3 + i / 2) * step for i, name in enumerate(names)}
        found = ()
        if step == 3:
            grads["fc1.weight"] = NAN
            found = (finding(3, message='gradient of fc1.weight is NaN: a < b & "c"'),)
        if step == 5:
            found = (finding(5, "exploding-gradient", "warning", line=7, parameters=["fc3.weight", "fc3.bias"]),)
        modules = {"act1": {"dead_fraction": 0.1 * step, "saturated_fraction": None}}
        modules["act2"] = {"dead_fraction": None, "saturated_fraction": 0.05}
        records.append(record(step, grads, loss=2.0 / step, findings=found, modules=modules))
    return records


class _Tree(HTMLParser):
    """Nesting of non-void elements, every attribute, the text of <style>, the ids."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.styles: list[str] = []
        self.ids: set[str] = set()
        self.roots = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._record(tag, attrs)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._record(tag, attrs)

    def _record(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if not self.stack:
            self.roots += 1
        d = dict(attrs)
        self.tags.append((tag, d))
        if d.get("id"):
            self.ids.add(str(d["id"]))
        if d.get("style"):
            self.styles.append(str(d["style"]))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else 'nothing'}>")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self.stack and self.stack[-1] == "style":
            self.styles.append(data)


def parse(page: str) -> _Tree:
    tree = _Tree()
    tree.feed(page)
    tree.close()
    return tree


def svgs(page: str) -> dict[str, ET.Element]:
    """Every <svg class="gw-plot"> of the page, parsed as XML, by its aria-label."""
    out = {}
    for text in re.findall(r'<svg class="gw-plot".*?</svg>', page, flags=re.S):
        root = ET.fromstring(text)
        out[root.get("aria-label")] = root
    return out


def titled(root: ET.Element, tag: str) -> list[tuple[ET.Element, str]]:
    out = []
    for el in root.iter(tag):
        t = el.find("title")
        out.append((el, "" if t is None else "".join(t.itertext())))
    return out


def points(el: ET.Element) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in (p.split(",") for p in el.get("points", "").split())]


def assert_affine(xs: list[float], ys: list[float], tol: float = 0.25) -> float:
    """ys = a + b * xs within ``tol`` pixels (the coordinates are written to a tenth); returns b."""
    assert len(xs) >= 2
    b = (ys[-1] - ys[0]) / (xs[-1] - xs[0])
    errors = [abs(ys[0] + b * (x - xs[0]) - y) for x, y in zip(xs, ys, strict=True)]
    assert max(errors) < tol, (xs, ys, errors)
    return b


# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("render", [render_html, render_fragment])
def test_self_contained(render):
    page = render(small_run(), title="run", source="train.py")
    tree = parse(page)
    bad = []
    for tag, attrs in tree.tags:
        if tag in {"script", "link", "iframe", "img", "object", "embed", "image", "use", "base", "meta"} and not (
            tag == "meta" and set(attrs) <= {"charset", "name", "content"}
        ):
            bad.append(f"<{tag} {attrs}>")
        for key in ("src", "href", "xlink:href", "action", "srcset", "poster", "data", "background", "formaction"):
            value = attrs.get(key)
            if value is not None and not value.startswith("#"):
                bad.append(f"<{tag} {key}={value!r}>")
    assert not bad, bad
    css = "\n".join(tree.styles)
    assert css and "url(" not in css and "@import" not in css and "@font-face" not in css
    assert "http://" not in page and "https://" not in page and "//" not in re.sub(r"<[^>]*>", "", css)


@pytest.mark.parametrize("render", [render_html, render_fragment])
def test_well_formed(render):
    page = render(small_run())
    tree = parse(page)
    assert tree.errors == [] and tree.stack == []
    plots = re.findall(r"<svg\b.*?</svg>", page, flags=re.S)
    assert len(plots) > 5
    for text in plots:
        ET.fromstring(text)  # raises on a malformed picture
    if render is render_html:
        assert page.startswith("<!DOCTYPE html>\n<html") and page.rstrip().endswith("</html>")
        assert '<meta charset="utf-8">' in page
    else:
        assert page.startswith('<div class="gw-report"><style>') and page.endswith("</div>") and tree.roots == 1


def test_fragment_styles_are_scoped():
    page = render_fragment(small_run())
    css = re.search(r"<style>(.*?)</style>", page, flags=re.S).group(1)
    selectors = [rule.split("{")[0].strip() for rule in css.split("}") if rule.strip()]
    unscoped = [s for group in selectors for s in group.split(",") if not s.strip().startswith(".gw-report")]
    assert selectors and unscoped == []


def test_findings_with_escaped_message_location_and_link():
    page = render_html(small_run())
    message = 'gradient of fc1.weight is NaN: a < b & "c"'
    assert html.escape(message) in page and message not in page
    assert "<code>train.py:42</code>" in page and "<code>train.py:7</code>" in page
    assert '<a href="#step-3">step 3</a>' in page and '<a href="#step-5">step 5</a>' in page
    assert "2 alerts: nonfinite-gradient at" in page and "exploding-gradient at" in page
    tree = parse(page)
    targets = {str(a["href"])[1:] for tag, a in tree.tags if tag == "a" and a.get("href")}
    assert {"step-3", "step-5"} <= targets
    assert targets <= tree.ids, targets - tree.ids  # every link lands somewhere
    # the error is listed before the warning; each with its badge, fix and parameters
    assert page.index("nonfinite-gradient</b>") < page.index("exploding-gradient</b>")
    assert '<span class="gw-badge gw-error">error</span>' in page and "<b>Fix:</b> clip the gradients" in page
    assert "Parameters: <code>fc3.weight</code>, <code>fc3.bias</code>" in page


def test_no_alerts_verdict_and_counts():
    records = [record(s, {"a.weight": 0.1, "b.weight": 0.2}) for s in (10, 20, 30)]
    page = render_html(records, source="log.jsonl")
    assert "No alerts over 3 recorded steps." in page
    assert "steps 10–30 (3 records)" in page and "2 parameters" in page and "<code>log.jsonl</code>" in page
    assert 'id="step-10"' in page and 'id="step-30"' in page


def test_gradient_flow_points_map_to_log10_of_the_norms():
    norms = {"l1.weight": 1e-1, "l2.weight": 1e-3, "l3.weight": 2e-2, "l4.weight": 1.0, "l5.weight": 3e-5}
    page = render_html([record(1, norms)])
    flow = svgs(page)["gradient norm per parameter, in model order"]
    (line,) = [el for el in flow.iter("polyline") if el.get("data-step") == "1"]
    xs, ys = zip(*points(line), strict=True)
    assert all(a < b for a, b in itertools.pairwise(xs))  # model order, left to right
    slope = assert_affine([math.log10(v) for v in norms.values()], list(ys))
    assert slope < 0  # larger norm, higher on the page
    # the same order as the norms, computed independently
    assert sorted(range(5), key=lambda i: ys[i]) == sorted(range(5), key=lambda i: -math.log10(list(norms.values())[i]))
    # each x tick label is the parameter's name
    labels = [(t.find("title").text, t.find("title").tail) for t in flow.iter("text") if t.find("title") is not None]
    assert labels == [(name, name) for name in norms]


def test_over_steps_points_map_to_steps_and_log10_values():
    values = [1.0, 10.0, 100.0, 0.1, 1.0, 3.0]
    records = [record(s, {"fc.weight": v, "fc.bias": 0.5}) for s, v in zip(range(3, 9), values, strict=True)]
    plot = svgs(render_html(records))["gradient norms over steps"]
    (line,) = [el for el, t in titled(plot, "polyline") if t == "fc.weight"]
    xs, ys = zip(*points(line), strict=True)
    assert assert_affine(list(range(3, 9)), list(xs)) > 0
    assert assert_affine([math.log10(v) for v in values], list(ys)) < 0
    # the total: sqrt(g1^2 + g2^2), on the same axis
    (total,) = [el for el, t in titled(plot, "polyline") if t == "total"]
    ty = [y for _, y in points(total)]
    both = [math.log10(math.hypot(v, 0.5)) for v in values] + [math.log10(v) for v in values]
    assert_affine(both, ty + list(ys))
    # few points: each one is a circle with its value
    hover = {t for _, t in titled(plot, "circle")}
    assert "fc.weight at step 5: 100" in hover and "fc.weight at step 6: 0.1" in hover


def test_nonfinite_values_are_marked_not_dropped():
    records = small_run()
    records[4]["params"]["fc2.bias"] = entry(INF, nonfinite=3)
    page = render_html(records)
    plots = svgs(page)
    flow = [t for _, t in titled(plots["gradient norm per parameter, in model order"], "g")]
    assert "fc1.weight at step 3: NaN" in flow
    assert "fc2.bias at step 5: +Inf (3 non-finite gradient entries)" in flow
    over = [t for _, t in titled(plots["gradient norms over steps"], "g")]
    assert "fc1.weight at step 3: NaN" in over and "total at step 3: NaN" in over
    # the line is broken at the NaN, not joined across it
    pieces = [points(el) for el, t in titled(plots["gradient norms over steps"], "polyline") if t == "fc1.weight"]
    assert len(pieces) == 2 and len(pieces[0]) == 2 and len(pieces[1]) == 3
    assert "NaN/Inf gradients in 2 records, the first at" in page and 'id="step-3"' in page


def test_zeros_on_a_log_axis_sit_on_the_floor_and_are_marked():
    records = [record(s, {"a.weight": 0.1 * s, "b.weight": 0.0 if s == 2 else 1e-4}) for s in (1, 2, 3)]
    plot = svgs(render_html(records))["gradient norms over steps"]
    marks = [t for _, t in titled(plot, "g") if "floor" in t]
    # the floor: a decade under the smallest positive value, so that the zero stands apart
    floor = 10.0 ** (math.floor(math.log10(1e-4)) - 1)
    assert floor == 1e-5 and marks == ["b.weight at step 2: 0 (below 1e-5, drawn on the axis floor)"]
    circles = {t: float(el.get("cy")) for el, t in titled(plot, "circle")}
    bottom = max(float(el.get("y")) + float(el.get("height")) for el in plot.iter("rect"))
    assert circles["b.weight at step 2: 0"] == pytest.approx(bottom, abs=0.11)  # the data area's bottom edge
    assert circles["b.weight at step 1: 1e-4"] < bottom - 10


def test_user_text_is_escaped():
    evil = "<script>alert(1)</script>"
    records = [
        record(s, {evil: 0.1, "ok.weight": 0.2}, modules={"a&b": {"dead_fraction": 0.5, "saturated_fraction": None}})
        for s in (1, 2)
    ]
    records[1]["findings"] = [finding(2, message="<img src=x onerror=alert(1)>", parameters=[evil], fix="a<b")]
    page = render_html(records, title="<b>title</b>", source='"x" & y')
    assert "<script" not in page.lower() and "<img" not in page.lower() and "<b>title" not in page
    assert html.escape(evil) in page and "a&amp;b" in page and "&lt;b&gt;title&lt;/b&gt;" in page
    assert "&quot;x&quot; &amp; y" in page and "a&lt;b" in page
    tree = parse(page)
    assert tree.errors == [] and tree.stack == []
    for text in re.findall(r"<svg\b.*?</svg>", page, flags=re.S):
        ET.fromstring(text)
    flow = svgs(page)["gradient norm per parameter, in model order"]
    assert evil in {t for _, t in titled(flow, "text")}  # the raw name, as XML reads it back


def test_long_names_are_shortened_in_labels_with_the_full_name_on_hover():
    long = "encoder." + "very_long_module_name." * 10 + "weight"
    page = render_html([record(1, {long: 0.1, "head.weight": 0.2})])
    flow = svgs(page)["gradient norm per parameter, in model order"]
    (label,) = [t for t in flow.iter("text") if t.find("title") is not None and t.find("title").text == long]
    shown = label.find("title").tail
    assert len(shown) <= 30 and "…" in shown and shown.startswith("encoder.") and shown.endswith("weight")
    assert f'title="{long}"' in page  # the legend's full name


def test_update_ratio_reference_at_1e_minus_3():
    records = [record(s, {"a.weight": 1.0}, params={"a.weight": entry(1.0, ratio=10.0**-s)}) for s in range(1, 6)]
    plot = svgs(render_html(records))["update ratios over steps"]
    ticks = {t.text: float(t.get("y")) for t in plot.iter("text") if t.get("text-anchor") == "end" and t.get("x")}
    (line,) = [
        el.find("line")
        for el, t in titled(plot, "g")
        if t.startswith("1e-3: a typical healthy") and el.find("line") is not None
    ]
    assert "1e-3 healthy" in {t.text for t in plot.iter("text")}
    assert line.get("stroke-dasharray") and float(line.get("y1")) == pytest.approx(ticks["1e-3"], abs=0.11)
    (ratio,) = [el for el, t in titled(plot, "polyline") if t == "a.weight"]
    assert assert_affine([-s for s in range(1, 6)], [y for _, y in points(ratio)]) < 0


def test_dead_and_saturated_on_a_linear_0_to_1_axis():
    plot = svgs(render_html(small_run()))["dead and saturated"]
    ticks = {t.text: float(t.get("y")) for t in plot.iter("text") if t.get("text-anchor") == "end" and t.get("x")}
    assert {"0", "1.0"} <= set(ticks)
    (dead,) = [el for el, t in titled(plot, "polyline") if t == "act1: dead fraction"]
    (sat,) = [el for el, t in titled(plot, "polyline") if t == "act2: saturated fraction"]
    ys = [y for _, y in points(dead)]
    zero, one = ticks["0"], ticks["1.0"]
    assert ys == pytest.approx([zero + (one - zero) * 0.1 * s for s in range(1, 7)], abs=0.11)
    assert sat.get("stroke-dasharray")


def test_loss_scale_is_log_only_for_positive_losses_over_two_decades():
    linear = render_html([record(s, {"a.weight": 1.0}, loss=1.0 / s) for s in range(1, 5)])
    log = render_html([record(s, {"a.weight": 1.0}, loss=10.0**-s) for s in range(1, 5)])
    negative = render_html([record(s, {"a.weight": 1.0}, loss=-(10.0**s)) for s in range(1, 5)])
    assert "(linear scale)" in linear and "(log scale)" in log and "(linear scale)" in negative
    (line,) = [el for el, t in titled(svgs(log)["loss over steps"], "polyline") if t == "loss"]
    assert assert_affine([-s for s in range(1, 5)], [y for _, y in points(line)]) < 0


def test_many_parameters_are_shown_per_layer_combined_and_capped():
    records = []
    for step in (1, 2):
        params = {}
        for layer in range(30):
            params[f"layer{layer}.weight"] = entry(0.01 * (layer + 1) * step, weight=3.0, ratio=1e-3)
            params[f"layer{layer}.bias"] = entry(0.005 * step, weight=4.0, ratio=2e-3)
        records.append(record(step, {}, params=params))
    page = render_html(records)
    plot = svgs(page)["gradient norms over steps"]
    lines = {t for _, t in titled(plot, "polyline")}
    assert len(lines - {"total"}) == 10 and {"layer0", "layer29", "layer28"} <= lines
    assert "30 layers: 20 hidden" in page
    hover = {t.split(": ")[0]: float(t.split(": ")[1]) for _, t in titled(plot, "circle")}
    for layer in (0, 29):
        expected = math.hypot(0.01 * (layer + 1) * 2, 0.005 * 2)  # the layer's gradients together
        assert hover[f"layer{layer} at step 2"] == pytest.approx(expected, rel=1e-3)
    ratios = {
        t.split(": ")[0]: float(t.split(": ")[1]) for _, t in titled(svgs(page)["update ratios over steps"], "circle")
    }
    # ||dw|| / ||w|| over the layer: sqrt((1e-3 * 3)^2 + (2e-3 * 4)^2) / 5
    assert ratios["layer29 at step 1"] == pytest.approx(math.hypot(3e-3, 8e-3) / 5.0, rel=1e-3)


def test_several_optimizers():
    records = []
    for step in (1, 2, 3):
        records.append(record(step, {"gen.0.weight": 0.1 * step}, loss=1.0, optimizer="optimizer 0"))
        records.append(record(step, {"disc.0.weight": 0.2}, loss=0.7, optimizer="optimizer 1"))
    page = render_html(records)
    assert "optimizers <code>optimizer 0</code>, <code>optimizer 1</code>" in page
    plots = svgs(page)
    assert {"total (optimizer 0)", "total (optimizer 1)"} <= {
        t for _, t in titled(plots["gradient norms over steps"], "polyline")
    }
    flow = plots["gradient norm per parameter, in model order"]
    (line,) = [el for el in flow.iter("polyline") if el.get("data-step") == "2"]
    assert len(points(line)) == 2  # both optimizers' parameters at step 2
    assert page.count('id="step-2"') <= 1 and tuple(parse(page).errors) == ()


def test_empty_and_single_record():
    empty = render_html([])
    assert "Nothing was recorded" in empty and "<svg" not in empty and parse(empty).errors == []
    one = render_html([record(7, {"fc.weight": 0.3, "fc.bias": NAN})])
    tree = parse(one)
    assert tree.errors == [] and tree.stack == [] and "step 7 (1 record)" in one and 'id="step-7"' in one
    over = svgs(one)["gradient norms over steps"]
    assert "fc.weight at step 7: 0.3" in {t for _, t in titled(over, "circle")}
    assert "fc.bias at step 7: NaN" in {t for _, t in titled(over, "g")}


def test_records_with_none_values():
    records = [record(s, {"a.weight": 0.1}) for s in (1, 2, 3)]
    records[1]["loss"] = None
    records[1]["grad_norm_total"] = None
    records[1]["params"]["a.weight"] = entry(None, weight=None, ratio=0.0)  # no gradient this step
    records[2]["modules"] = None
    records[2]["findings"] = None
    page = render_html(records)
    over = svgs(page)["gradient norms over steps"]
    assert {t for _, t in titled(over, "circle")} >= {"a.weight at step 1: 0.1", "a.weight at step 3: 0.1"}
    assert [t for _, t in titled(over, "polyline") if t == "a.weight"] == []  # a gap, not a line across it


@pytest.fixture(scope="module")
def long_run() -> tuple[list[dict], str]:
    """10,000 steps of 200 parameters (100 layers): a NaN at step 812, findings at 812 and 5000, a spike at 3333,
    a layer without gradient. The entries are shared between records, to keep the fixture small."""
    names = [f"blocks.{i}.{kind}" for i in range(100) for kind in ("weight", "bias")]
    pool = [
        {
            name: entry(10.0 ** (-6 + 5 * (i // 2) / 100) * (1 + 0.5 * math.sin(k)), ratio=1e-3)
            for i, name in enumerate(names)
        }
        for k in range(17)
    ]
    for entries in pool:
        entries["blocks.30.weight"] = entries["blocks.30.bias"] = entry(0.0, ratio=0.0)
    records = []
    for step in range(1, 10_001):
        params = pool[step % 17]
        found = []
        if step in (812, 3333):
            params = dict(params)
            params["blocks.60.weight"] = entry(NAN, nonfinite=5) if step == 812 else entry(1e3)
        if step == 812:
            found = [finding(812, parameters=["blocks.60.weight"])]
        if step == 5000:
            found = [finding(5000, "vanishing-gradient", "warning", parameters=["blocks.0.weight"])]
        records.append({"step": step, "loss": 1.0 / step, "optimizer": "opt", "grad_norm_total": 0.1, "params": params,
                        "modules": {}, "findings": found})  # fmt: skip
    return records, render_html(records)


def test_long_run_stays_small_and_keeps_what_matters(long_run):
    _, page = long_run
    assert len(page.encode()) < 2_000_000
    assert parse(page).errors == []
    plots = svgs(page)
    assert (
        "NaN/Inf gradients in 1 record, the first at" in page and 'id="step-812"' in page and 'id="step-5000"' in page
    )
    over = plots["gradient norms over steps"]
    assert "blocks.60 at step 812: NaN (5 non-finite gradient entries)" in {t for _, t in titled(over, "g")}
    assert "blocks.0.weight at step 812: NaN" not in page  # only what is non-finite is marked
    flow = plots["gradient norm per parameter, in model order"]
    assert "blocks.60.weight at step 812: NaN (5 non-finite gradient entries)" in {t for _, t in titled(flow, "g")}
    # the marks of the finding steps give the step -> x map
    marks = {int(a.get("href").removeprefix("#step-")): float(a.find("line").get("x1")) for a in over.iter("a")}
    assert set(marks) == {812, 5000}
    scale = (marks[5000] - marks[812]) / (5000 - 812)

    def x(step: int) -> float:
        return marks[812] + (step - 812) * scale

    series: dict[str, list[tuple[float, float]]] = {}
    for el, t in titled(over, "polyline"):
        series.setdefault(t, []).extend(points(el))
    assert len(series) == 11  # 10 layers and the total
    for name, pts in series.items():
        assert len(pts) <= 620, (name, len(pts))  # thinned from 10,000
        assert any(abs(px - x(5000)) < 0.15 for px, _ in pts), name  # the finding's step is kept
    # the spike is kept, and is the highest point of its line
    spike = series["blocks.60"]
    top = min(spike, key=lambda p: p[1])
    assert abs(top[0] - x(3333)) < 0.15
    # the dead layer is shown, on the floor, and marked there
    assert "blocks.30" in series and any(
        t.startswith("blocks.30 at steps 1–10000 (10000 records): 0 (below") for _, t in titled(over, "g")
    )


def test_bad_records_are_named():
    good = record(1, {"fc.weight": 0.1})
    cases = [
        (
            "not a list",
            ArgumentTypeError,
            "render_html: records must be a list of dicts, one per recorded step (got str",
        ),
        (
            [good, [1, 2]],
            ArgumentTypeError,
            "render_html: records[1] must be a dict with an int 'step' (got list: [1, 2])",
        ),
        ([good, good, {"loss": 1.0}], ArgumentError, "render_html: records[2] has no 'step' (keys: loss)"),
        ([{**good, "step": "3"}], ArgumentTypeError, "render_html: records[0]['step'] must be an int (got str: '3')"),
        (
            [{**good, "step": True}],
            ArgumentTypeError,
            "render_html: records[0]['step'] must be an int (got bool: True)",
        ),
        ([{**good, "step": -1}], ArgumentError, "render_html: records[0]['step'] must be >= 0 (got -1)"),
        (
            [good, {**good, "step": 2, "params": {"fc.weight": entry("big")}}],  # type: ignore[arg-type]
            ArgumentTypeError,
            "render_html: records[1]['params']['fc.weight']['grad_norm'] must be a number or None (got str: 'big')",
        ),
        (
            [{**good, "params": {"fc.weight": [0.1]}}],
            ArgumentTypeError,
            "render_html: records[0]['params']['fc.weight'] must be a dict of norms (got list: [0.1])",
        ),
        (
            [{**good, "loss": "1.0"}],
            ArgumentTypeError,
            "render_html: records[0]['loss'] must be a number or None (got str: '1.0')",
        ),
        (
            [{**good, "findings": [finding(1, severity="fatal")]}],
            ArgumentError,
            (
                "render_html: records[0]['findings'][0]['severity'] must be one of 'error', 'warning', 'info' "
                "(got 'fatal')"
            ),
        ),
        (
            [{**good, "findings": [{"kind": "x", "severity": "info"}]}],
            ArgumentError,
            "render_html: records[0]['findings'][0] has no 'message' (keys: kind, severity)",
        ),
    ]
    for records, error, message in cases:
        with pytest.raises(error) as info:
            render_html(records)
        assert str(info.value).startswith(message), (str(info.value), message)
        assert isinstance(info.value, GradwiseError)
    with pytest.raises(ArgumentTypeError, match=r"render_fragment: title must be a str \(got int: 3\)"):
        render_fragment([good], title=3)  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match=r"render_html: source must be a str or None \(got"):
        render_html([good], source=Path("x"))  # type: ignore[arg-type]


def _png(path: Path) -> tuple[int, int, bytes]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    idat, at = b"", 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        if data[at + 4 : at + 8] == b"IDAT":
            idat += data[at + 8 : at + 8 + length]
        at += 12 + length
    return width, height, zlib.decompress(idat)


def test_screenshot_in_chromium(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed: the report is not rendered to a screenshot")
    page = tmp_path / "report.html"
    page.write_text(render_html(small_run(), title="screenshot", source="train.py"), encoding="utf-8")
    shot = tmp_path / "report.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
    command = [chromium, *flags, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
               "--window-size=1280,2400", page.as_uri()]  # fmt: skip
    try:
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail("chromium did not write the screenshot within 180 s")
    assert shot.exists(), f"chromium wrote no screenshot (exit status {done.returncode}): {done.stderr[-2000:]}"
    width, height, pixels = _png(shot)
    assert (width, height) == (1280, 2400)
    # not blank: many distinct byte values, and a good share of the bytes not white
    assert len(set(pixels)) > 64
    assert sum(b != 0xFF for b in pixels) > 0.05 * len(pixels)
