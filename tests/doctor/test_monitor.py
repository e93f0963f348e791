"""gw.doctor.monitor: every recorded figure against a hand-computed reference, the outputs
read back, the alerts (with their step and line) and no side effects."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradwise as gw
from gradwise.errors import ArgumentError, ArgumentTypeError
from tests.doctor.instrumentation import global_state
from tests.doctor.source import line_of

REL = 1e-5


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 8), nn.Sigmoid())


class Reference:
    """The figures of each step, computed by hand around the user's own calls."""

    def __init__(self, model):
        self.model = model
        self.outputs = {}
        self.handles = [
            m.register_forward_hook(lambda m, a, o, name=name: self.outputs.__setitem__(name, o.detach().clone()))
            for name, m in model.named_modules()
            if isinstance(m, nn.ReLU | nn.Tanh | nn.Sigmoid)
        ]
        self.steps = []

    def after_backward(self, loss):
        self.loss = loss.item()
        self.grads = {n: p.grad.double().norm().item() for n, p in self.model.named_parameters()}
        self.before = {n: p.detach().clone() for n, p in self.model.named_parameters()}

    def after_step(self):
        ratios = {
            n: ((p.detach() - self.before[n]).double().norm() / self.before[n].double().norm()).item()
            for n, p in self.model.named_parameters()
        }
        o = self.outputs
        self.steps.append(
            {
                "loss": self.loss,
                "grads": self.grads,
                "weights": {n: b.double().norm().item() for n, b in self.before.items()},
                "ratios": ratios,
                "dead": (o["1"] <= 0).all(0).double().mean().item(),
                "tanh": (o["3"].abs() > 0.99).double().mean().item(),
                "sigmoid": ((o["5"] < 0.01) | (o["5"] > 0.99)).double().mean().item(),
            }
        )

    def close(self):
        for h in self.handles:
            h.remove()


def _train(model, opt, steps, ref=None, clip=None, x_scale=3.0):
    for _ in range(steps):
        x = torch.randn(64, 6) * x_scale
        y = torch.rand(64, 8)
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        if ref is not None:
            ref.after_backward(loss)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if ref is not None:
            ref.after_step()


def _close(a, b, rel=REL):
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)


def _compare(record, expected, names):
    problems = []
    if not _close(record["loss"], expected["loss"]):
        problems.append(("loss", record["loss"], expected["loss"]))
    for n in names:
        got = record["params"][n]
        for key, want in (("grad_norm", expected["grads"][n]), ("param_norm", expected["weights"][n])):
            if not _close(got[key], want):
                problems.append((n, key, got[key], want))
        if not _close(got["update_ratio"], expected["ratios"][n], 1e-4):
            problems.append((n, "update_ratio", got["update_ratio"], expected["ratios"][n]))
        if got["nonfinite"] != 0:
            problems.append((n, "nonfinite", got["nonfinite"]))
    total = math.sqrt(sum(v * v for v in expected["grads"].values()))
    if not _close(record["grad_norm_total"], total):
        problems.append(("total", record["grad_norm_total"], total))
    for module, key, want in (("1", "dead_fraction", "dead"), ("3", "saturated_fraction", "tanh")):
        if not _close(record["modules"][module][key], expected[want]):
            problems.append((module, key, record["modules"][module][key], expected[want]))
    if not _close(record["modules"]["5"]["saturated_fraction"], expected["sigmoid"]):
        problems.append(("5", record["modules"]["5"], expected["sigmoid"]))
    return problems


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_every_figure_equals_the_hand_computed_one(optimizer):
    model = _net()
    opt = (
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        if optimizer == "sgd"
        else torch.optim.Adam(model.parameters(), lr=1e-2)
    )
    ref = Reference(model)
    with gw.doctor.monitor(model, opt) as mon:
        _train(model, opt, 6, ref)
    ref.close()
    names = [n for n, _ in model.named_parameters()]
    assert [r["step"] for r in mon.history] == [1, 2, 3, 4, 5, 6]
    assert all(list(r["params"]) == names for r in mon.history)  # first layer first
    assert all(set(r["modules"]) == {"1", "3", "5"} for r in mon.history)
    problems = [(r["step"], p) for r, e in zip(mon.history, ref.steps, strict=True) for p in _compare(r, e, names)]
    assert not problems, problems
    assert mon.findings == [] and mon.internal_errors == []
    assert mon.history[0]["modules"]["1"]["saturated_fraction"] is None
    assert mon.history[0]["modules"]["3"]["dead_fraction"] is None


def test_every_n_records_steps_1_then_every_nth():
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ref = Reference(model)
    with gw.doctor.monitor(model, opt, every=3) as mon:
        _train(model, opt, 8, ref)
    ref.close()
    assert [r["step"] for r in mon.history] == [1, 4, 7]
    assert mon.steps == 8
    names = [n for n, _ in model.named_parameters()]
    problems = [p for r in mon.history for p in _compare(r, ref.steps[r["step"] - 1], names)]
    assert not problems, problems


def test_gradient_norms_are_the_backwards_before_clipping():
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ref = Reference(model)
    with gw.doctor.monitor(model, opt) as mon:
        _train(model, opt, 3, ref, clip=1e-3)
    ref.close()
    names = [n for n, _ in model.named_parameters()]
    problems = [p for r, e in zip(mon.history, ref.steps, strict=True) for p in _compare(r, e, names)]
    assert not problems, problems
    assert all(r["grad_norm_total"] > 1e-3 * 10 for r in mon.history)  # unclipped: far above the clip


def test_a_scaled_loss_is_recorded_unscaled():
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    losses, grads = [], []
    with gw.doctor.monitor(model, opt) as mon:
        for _ in range(3):
            opt.zero_grad()
            loss = F.mse_loss(model(torch.randn(32, 6)), torch.rand(32, 8))
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            losses.append(loss.item())
            grads.append(math.sqrt(sum(p.grad.double().norm().item() ** 2 for p in model.parameters())))
            scaler.step(opt)
            scaler.update()
    assert [r["loss"] for r in mon.history] == pytest.approx(losses, rel=REL)
    assert [r["grad_norm_total"] for r in mon.history] == pytest.approx(grads, rel=REL)


def test_an_optimizer_with_a_closure_is_recorded():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=4)
    seen = []

    def closure():
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        seen.append((loss.item(), model.weight.grad.norm().item(), model.weight.detach().clone()))
        return loss

    with gw.doctor.monitor(model, opt) as mon:
        before = model.weight.detach().clone()
        opt.step(closure)
    (record,) = mon.history
    assert record["params"]["weight"]["grad_norm"] == pytest.approx(seen[-1][1], rel=REL)  # the last evaluation
    want = ((model.weight.detach() - before).norm() / before.norm()).item()
    assert record["params"]["weight"]["update_ratio"] == pytest.approx(want, rel=1e-4)
    assert record["params"]["weight"]["param_norm"] == pytest.approx(before.norm().item(), rel=REL)
    assert mon.internal_errors == []


def test_several_models_and_optimizers_gan():
    torch.manual_seed(0)
    gen = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    disc = nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    opt_g = torch.optim.Adam(gen.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    d_grads = []
    with gw.doctor.monitor({"G": gen, "D": disc}) as mon:
        for _ in range(20):
            real = torch.randn(32, 2) + 3
            fake = gen(torch.randn(32, 4))
            opt_d.zero_grad()
            loss_d = bce(disc(real), torch.ones(32, 1)) + bce(disc(fake.detach()), torch.zeros(32, 1))
            loss_d.backward()
            d_grads.append(disc[0].weight.grad.norm().item())
            opt_d.step()
            opt_g.zero_grad()
            bce(disc(fake), torch.ones(32, 1)).backward()
            opt_g.step()
    assert [r["optimizer"] for r in mon.history[:4]] == ["opt_d", "opt_g", "opt_d", "opt_g"]
    d_records = [r for r in mon.history if r["optimizer"] == "opt_d"]
    assert set(d_records[0]["params"]) == {"D.0.weight", "D.0.bias", "D.2.weight", "D.2.bias"}
    assert [r["params"]["D.0.weight"]["grad_norm"] for r in d_records] == pytest.approx(d_grads, rel=REL)
    assert mon.findings == [] and mon.internal_errors == []


def test_jsonl_is_one_record_per_step_and_reads_back(tmp_path):
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    path = tmp_path / "run.jsonl"
    with gw.doctor.monitor(model, opt, jsonl=path) as mon:
        _train(model, opt, 4)
    lines = path.read_text().splitlines()
    assert len(lines) == 4
    assert [json.loads(line) for line in lines] == mon.history
    assert gw.doctor.read_jsonl(path) == mon.history
    fragment = mon._repr_html_()  # a notebook shows the report
    assert fragment.startswith("<div") and "0.weight" in fragment and "<script" not in fragment
    first = json.loads(lines[0])
    assert set(first) >= {"step", "loss", "params", "modules", "findings"}
    assert set(first["params"]["0.weight"]) == {"grad_norm", "param_norm", "update_ratio", "nonfinite"}


def test_read_jsonl_names_the_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"step": 1, "params": {}}\nnot json\n')
    with pytest.raises(ArgumentError, match=r"bad.jsonl:2 is not JSON"):
        gw.doctor.read_jsonl(path)
    path.write_text('{"loss": 1.0}\n')
    with pytest.raises(ArgumentError, match=r"bad.jsonl:1 is not a monitor record"):
        gw.doctor.read_jsonl(path)
    with pytest.raises(ArgumentError, match="no such log file"):
        gw.doctor.read_jsonl(tmp_path / "missing.jsonl")


def test_tensorboard_scalars_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    writer = SummaryWriter(str(tmp_path))
    with gw.doctor.monitor(model, opt, tensorboard=writer) as mon:
        _train(model, opt, 3)
    writer.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"gradwise/grad_norm/0.weight", "gradwise/update_ratio/0.weight", "gradwise/nonfinite/0.weight"} <= tags
    assert {"gradwise/dead_fraction/1", "gradwise/grad_norm_total", "gradwise/loss"} <= tags
    events = acc.Scalars("gradwise/grad_norm/2.weight")
    assert [e.step for e in events] == [1, 2, 3]
    want = [r["params"]["2.weight"]["grad_norm"] for r in mon.history]
    assert [e.value for e in events] == pytest.approx(want, rel=1e-6)  # float32 in the event file


def _nan_script(tmp_path, body: str) -> str:
    script = tmp_path / "train.py"
    script.write_text(body)
    return str(script)


def test_a_nan_in_the_loop_is_reported_at_its_step_and_line():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    with gw.doctor.monitor(model, opt) as mon:
        for step in range(1, 12):
            x = torch.randn(32, 4)
            opt.zero_grad()
            out = model(x)
            if step >= 7:
                out = out + torch.log(x[:, :1] - 100.0)  # the line
            loss = out.pow(2).mean()
            loss.backward()
            opt.step()
    line = line_of("the line")
    (f,) = [f for f in mon.findings if f.kind == "non-finite"]
    assert (f.step, f.line, f.file) == (7, line, __file__)
    assert "log of a negative number" in f.message
    assert f.parameters and f.data["located_by"] == "next-step"
    assert mon.internal_errors == []


def test_a_nan_born_in_the_models_forward_is_found_by_replaying_that_step():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 16), nn.Linear(16, 1)

        def forward(self, x):
            h = torch.exp(self.a(x))  # overflows on large inputs
            return self.b(h)

    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with gw.doctor.monitor(model, opt) as mon:
        for step in range(1, 9):
            x = torch.randn(32, 4) * (1000.0 if step == 5 else 0.1)
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    (f,) = [f for f in mon.findings if f.kind == "non-finite"]
    assert (f.step, f.line) == (5, line_of("overflows on large inputs"))
    assert f.data["located_by"] == "replay" and "exp overflows" in f.message
    # the replay left the model as it was: the weights are those the (NaN) update wrote
    assert torch.isnan(model.a.weight).all()
    assert mon.internal_errors == []


def test_a_one_off_nan_outside_the_model_is_reported_without_a_line():
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    counts = []
    with gw.doctor.monitor(model, opt) as mon:
        for step in range(1, 8):
            opt.zero_grad()
            loss = F.mse_loss(model(torch.randn(8, 6)), torch.rand(8, 8))
            if step == 3:
                loss = loss * float("nan")
            loss.backward()
            counts.append(int((~torch.isfinite(model[0].weight.grad)).sum()))
            opt.step()
    (f,) = mon.findings
    assert (f.kind, f.step, f.line) == ("non-finite", 3, None)
    assert "the loss was nan" in f.message and "finite outputs" in f.message
    assert next(r["step"] for r in mon.history if r["params"]["0.weight"]["nonfinite"]) == 3
    assert [r["params"]["0.weight"]["nonfinite"] for r in mon.history] == counts  # counted, element by element
    assert counts[2] > 0
    assert mon.internal_errors == []


def test_alerts_raise_stops_the_run_and_leaves_nothing_behind():
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    state = global_state()
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    steps = 0
    with pytest.raises(gw.doctor.GradientAlert) as info:
        with gw.doctor.monitor(model, opt, alerts="raise"):
            for step in range(1, 10):
                opt.zero_grad()
                x = torch.randn(8, 6)
                if step == 4:
                    x[0, 0] = float("nan")
                F.mse_loss(model(x), torch.rand(8, 8)).backward()
                opt.step()
                steps = step
    assert info.value.finding.kind == "non-finite" and info.value.finding.step == 4
    assert steps == 3  # stopped inside step 4's opt.step()
    assert global_state() == state
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()] == hooks
    assert not opt._optimizer_step_post_hooks


def test_no_side_effects_also_when_the_block_raises():
    model = _net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    state = global_state()
    torch.manual_seed(1)
    plain = [p.detach().clone() for p in _run_copy(model, opt, monitored=False)]
    torch.manual_seed(1)
    watched = [p.detach().clone() for p in _run_copy(model, opt, monitored=True)]
    assert all(torch.equal(a, b) for a, b in zip(plain, watched, strict=True))  # the same training
    with pytest.raises(RuntimeError, match="user error"):
        with gw.doctor.monitor(model, opt):
            _train(model, opt, 2)
            raise RuntimeError("user error")
    assert global_state() == state
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks


def _run_copy(model, opt, monitored):
    import copy

    m = copy.deepcopy(model)
    o = type(opt)(m.parameters(), **opt.defaults)
    ctx = gw.doctor.monitor(m, o) if monitored else _null()
    with ctx:
        _train(m, o, 5)
    return list(m.parameters())


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def test_clean_runs_raise_no_alert():
    torch.manual_seed(0)
    runs = []
    cnn = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 36, 4)
    )
    runs.append((cnn, lambda: torch.randn(16, 1, 12, 12), lambda: torch.randint(0, 4, (16,)), F.cross_entropy))
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.1)
    emb = nn.Embedding(50, 32)

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.layer, self.head = emb, layer, nn.Linear(32, 50)

        def forward(self, t):
            return self.head(self.layer(self.emb(t))).flatten(0, 1)

    runs.append((LM(), lambda: torch.randint(0, 50, (8, 12)), lambda: torch.randint(0, 50, (96,)), F.cross_entropy))
    deep = nn.Sequential(*[m for _ in range(8) for m in (nn.Linear(32, 32), nn.GELU())], nn.Linear(32, 1))
    runs.append((deep, lambda: torch.randn(32, 32), lambda: torch.randn(32, 1), F.mse_loss))
    for model, x, y, loss_fn in runs:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        with gw.doctor.monitor(model, opt) as mon:
            for _ in range(40):
                opt.zero_grad()
                loss_fn(model(x()), y()).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
        assert mon.findings == [], (type(model).__name__, [f.message for f in mon.findings])
        assert mon.internal_errors == []
        assert len(mon.history) == 40


def test_exploding_gradient_spike_at_its_step():
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with gw.doctor.monitor(model, opt) as mon:
        for step in range(1, 31):
            x = torch.randn(32, 6) * (1e5 if step == 20 else 0.5)
            opt.zero_grad()
            F.mse_loss(model[:4](x), torch.rand(32, 16) * (1e4 if step == 20 else 1)).backward()
            opt.step()
    kinds = [(f.kind, f.step) for f in mon.findings]
    assert kinds == [("exploding-gradient", 20)], [f.message for f in mon.findings]


def test_dead_units_after_a_huge_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gw.doctor.monitor(model, opt) as mon:
        for step in range(1, 21):
            if step == 5:
                with torch.no_grad():
                    model[0].bias.fill_(-100.0)  # every unit killed
            opt.zero_grad()
            F.mse_loss(model(torch.randn(32, 8)), torch.randn(32, 1)).backward()
            opt.step()
    (f,) = mon.findings
    assert f.kind == "dead-units" and f.parameters == ("1",)
    assert f.step == 9  # five recorded batches (steps 5..9) with every unit <= 0
    assert mon.history[5]["modules"]["1"]["dead_fraction"] == 1.0


def test_vanishing_gradient_in_a_deep_sigmoid_stack():
    torch.manual_seed(0)
    layers = []
    for _ in range(10):
        layers += [nn.Linear(32, 32), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gw.doctor.monitor(model, opt) as mon:
        for _ in range(12):
            opt.zero_grad()
            F.mse_loss(model(torch.randn(32, 32)), torch.randn(32, 1)).backward()
            opt.step()
    kinds = [(f.kind, f.step) for f in mon.findings]
    assert kinds == [("vanishing-gradient", 1)], [f.message for f in mon.findings]
    r = mon.history[0]["params"]
    assert r["0.weight"]["grad_norm"] / r["0.weight"]["param_norm"] < 1e-3 * (
        r["20.weight"]["grad_norm"] / r["20.weight"]["param_norm"]
    )


def test_bad_arguments_are_named():
    model = _net()
    with pytest.raises(ArgumentError, match=r"monitor: every must be a positive integer \(got 0\)"):
        gw.doctor.monitor(model, every=0).__enter__()
    with pytest.raises(ArgumentError, match="alerts must be True, False or 'raise'"):
        gw.doctor.GradientMonitor(model, alerts="loud")
    with pytest.raises(ArgumentTypeError, match=r"model must be an nn.Module.*got int"):
        gw.doctor.GradientMonitor(3)
    with pytest.raises(ArgumentTypeError, match=r"optimizer must be a torch.optim.Optimizer.*got str"):
        gw.doctor.GradientMonitor(model, "adam")
    with pytest.raises(ArgumentTypeError, match=r"tensorboard must be a torch\.utils\.tensorboard\.SummaryWriter"):
        gw.doctor.GradientMonitor(model, tensorboard=42)
    with pytest.raises(ArgumentTypeError, match="jsonl must be a path"):
        gw.doctor.GradientMonitor(model, jsonl=3)
    state = global_state()
    with pytest.raises(ArgumentError, match=r"monitor: jsonl: cannot write .*missing.*No such file or directory"):
        gw.doctor.monitor(model, jsonl="/nonexistent/missing/run.jsonl").__enter__()
    assert global_state() == state  # nothing left installed


def test_attach_detach_without_with():
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    state = global_state()
    mon = gw.doctor.GradientMonitor(model, opt).attach()
    _train(model, opt, 2)
    mon.detach()
    mon.detach()
    _train(model, opt, 2)
    assert [r["step"] for r in mon.history] == [1, 2]
    assert global_state() == state


# --- the command line --------------------------------------------------------------------------

_SCRIPT = """
import torch, torch.nn as nn, torch.nn.functional as F
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
for step in range(1, 13):
    x = torch.randn(32, 4)
    opt.zero_grad()
    out = model(x)
    if step >= BAD:
        out = out / (x[:, :1] * 0)
    F.mse_loss(out, torch.zeros(32, 1)).backward()
    opt.step()
"""


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "gradwise", *args], capture_output=True, text=True, timeout=300, env=_env()
    )


def _env():
    import os

    return {**os.environ, "PYTHONPATH": str(__import__("pathlib").Path(__file__).resolve().parents[2])}


def test_cli_monitor_writes_the_log_and_the_report(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(_SCRIPT.replace("BAD", "100"))
    log, html = tmp_path / "run.jsonl", tmp_path / "run.html"
    out = _cli("monitor", str(script), "--every", "2", "--jsonl", str(log), "--html", str(html))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 alert(s) over 12 optimizer step(s), 6 recorded (every 2)" in out.stdout
    assert out.stderr == ""  # no live status when stderr is not a terminal
    records = gw.doctor.read_jsonl(log)
    assert [r["step"] for r in records] == [1, 3, 5, 7, 9, 11]
    assert list(records[0]["params"]) == ["model.0.weight", "model.0.bias", "model.2.weight", "model.2.bias"]
    assert html.read_text().startswith("<!DOCTYPE html>")
    again = tmp_path / "again.html"
    out = _cli("report", str(log), "-o", str(again))
    assert out.returncode == 0, out.stderr
    assert again.read_text().startswith("<!DOCTYPE html>")


def test_cli_monitor_names_the_step_and_line_of_a_nan(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(_SCRIPT.replace("BAD", "6"))
    out = _cli("monitor", str(script))
    assert out.returncode == 1, out.stdout + out.stderr
    line = _SCRIPT.splitlines().index("        out = out / (x[:, :1] * 0)") + 1
    assert f"ERROR non-finite at {script}:{line} (step 6)" in out.stdout, out.stdout


def test_cli_usage_errors_before_the_script_runs(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("raise SystemExit('must not run')\n")
    cases = [
        (["monitor", str(tmp_path / "missing.py")], "no such script"),
        (["monitor", str(script), "--every", "0"], "--every must be >= 1"),
        (["monitor", str(script), "--jsonl", str(tmp_path / "no" / "x.jsonl")], "does not exist"),
        (["monitor", str(script), "--html", str(tmp_path)], "--html must name a file"),
        (["report", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "r.html")], "no such log file"),
    ]
    for args, message in cases:
        out = _cli(*args)
        assert out.returncode == 2 and message in out.stderr, (args, out.stderr)


def test_cli_live_status_only_on_a_terminal():
    import io

    from gradwise.cli import _Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    record = {"step": 7, "loss": 0.25, "grad_norm_total": 1.5, "findings": [{"kind": "dead-units"}]}
    term, pipe = Terminal(), io.StringIO()
    for stream in (term, pipe):
        progress = _Progress(stream)
        progress(record)
        progress.end()
    assert term.getvalue() == "\r\x1b[2Kgradwise monitor: step 7 | loss 0.25 | grad norm 1.5 | alerts 1\n"
    assert pipe.getvalue() == ""


def test_the_log_holds_one_record_per_step_also_when_the_run_ends_on_a_nan(tmp_path):
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    path = tmp_path / "run.jsonl"
    with gw.doctor.monitor(model, opt, jsonl=path) as mon:
        for step in range(1, 6):
            opt.zero_grad()
            loss = F.mse_loss(model(torch.randn(8, 6)), torch.rand(8, 8))
            if step >= 4:  # the recorder, armed after step 4, is still waiting when the run ends
                loss = loss + torch.log(torch.zeros(()))  # log of 0
            loss.backward()
            opt.step()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5]
    assert all(set(r) >= {"params", "modules", "loss", "findings"} for r in lines)
    assert len(mon.findings) == 1, (mon.findings, mon.internal_errors, [r["loss"] for r in lines])
    (f,) = mon.findings
    assert [x["kind"] for x in lines[3]["findings"]] == ["non-finite"] and lines[3]["findings"][0]["step"] == 4
    assert f.line == line_of("log of 0")


def test_the_bundled_late_divergence_example(tmp_path):
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "examples" / "monitor_late_divergence.py"
    html = tmp_path / "report.html"
    out = _cli("monitor", str(script), "--html", str(html))
    assert out.returncode == 1, out.stdout + out.stderr
    heads = [line.split(" at ")[0] + " " + line.rsplit(" ", 1)[-1] for line in out.stdout.splitlines()]
    heads = [h for h in heads if h.startswith(("ERROR", "WARNING"))]
    assert heads == ["ERROR exploding-gradient 153)", "WARNING dead-units 158)", "ERROR non-finite 180)"], out.stdout
    assert "mse_loss returned Inf" in out.stdout and html.stat().st_size > 10_000


def test_a_recurring_nan_constant_is_named_although_the_update_poisoned_the_weights():
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with gw.doctor.monitor(model, opt) as mon:
        for step in range(1, 9):
            opt.zero_grad()
            loss = F.mse_loss(model(torch.randn(8, 6)), torch.rand(8, 8))
            if step >= 5:
                loss = loss * float("nan")  # a NaN written in from step 5 on
            loss.backward()
            opt.step()
    (f,) = mon.findings
    assert (f.kind, f.step, f.line) == ("non-finite", 5, line_of("a NaN written in from step 5 on"))
    assert "given NaN as a number" in f.message


def test_cli_stop_at_alert_and_a_failing_script(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(_SCRIPT.replace("BAD", "6"))
    out = _cli("monitor", str(script), "--stop-at-alert")
    assert out.returncode == 1 and "stopped at the first alert" in out.stdout, out.stdout + out.stderr
    assert "over 7 optimizer step(s), 6 recorded" in out.stdout  # stopped once the next step named the line
    failing = tmp_path / "fails.py"
    failing.write_text(_SCRIPT.replace("BAD", "100") + "raise KeyError('oops')\n")
    out = _cli("monitor", str(failing))
    assert out.returncode == 1 and "The script raised KeyError: 'oops'" in out.stdout, out.stdout
    assert "0 alert(s) over 12 optimizer step(s)" in out.stdout


def test_two_optimizers_with_gradients_of_very_different_scales_are_judged_apart():
    torch.manual_seed(0)
    small = nn.Linear(8, 1)
    large = nn.Linear(8, 1)
    opt_s = torch.optim.SGD(small.parameters(), lr=1e-6)
    opt_l = torch.optim.SGD(large.parameters(), lr=1e-9)
    with gw.doctor.monitor({"small": small, "large": large}) as mon:
        for _ in range(30):
            x = torch.randn(16, 8)
            opt_s.zero_grad()
            small(x).mean().backward()
            opt_s.step()
            opt_l.zero_grad()
            (large(x).mean() * 1e6).backward()  # a loss a million times larger, every step
            opt_l.step()
    assert mon.findings == [], [f.message for f in mon.findings]
