"""The training-loop checks on inline code (broadcast-loss, step-without-gradient,
graph-leak, unscaled-clip, the reentrant-checkpoint case of graph-break): each finding at
its line, with its figures compared against plain torch, and the look-alikes left alone."""

import gc
import warnings
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import gradwise as gw
from tests.doctor.instrumentation import global_state
from tests.doctor.source import line_of


def serious(dr, kind=None):
    return [f for f in dr.findings if f.severity in ("error", "warning") and (kind is None or f.kind == kind)]


def regressor():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 1))


# --- broadcast-loss ------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["hand", "mse_loss", "l1_loss", "weights"])
def test_a_head_of_shape_b1_against_targets_of_shape_b_is_a_broadcast_loss(form):
    model = regressor()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(24, 5), torch.randn(24)
    with warnings.catch_warnings(), gw.doctor.watch() as dr:
        warnings.simplefilter("ignore")
        for _ in range(2):
            pred = model(x)
            if form == "hand":
                loss = ((pred - y) ** 2).mean()  # bc-hand
            elif form == "weights":
                loss = (torch.rand(24) * (pred.squeeze(-1) - y) ** 2 + y.abs() * pred).mean()  # bc-weights
            else:
                loss = getattr(F, form)(pred, y)  # bc-loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    (f,) = serious(dr)
    marker = {"hand": "bc-hand", "weights": "bc-weights"}.get(form, "bc-loss")
    assert (f.kind, f.severity, f.line) == ("broadcast-loss", "error", line_of(marker))
    expected = torch.broadcast_shapes((24, 1), (24,))  # the reference: torch's own rule
    assert tuple(f.data["broadcast"]) == tuple(expected) == (24, 24)
    assert sorted(map(tuple, f.data["shapes"])) == [(24,), (24, 1)]
    assert "(24, 24)" in f.message and ("squeeze(-1)" in f.fix or "view_as" in f.fix)
    assert set(f.parameters) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_pairwise_differences_weights_and_keepdim_statistics_are_not_broadcast_losses():
    torch.manual_seed(0)
    embed = nn.Linear(5, 4)
    centers = nn.Parameter(torch.randn(3, 5))
    x = torch.randn(16, 5)
    with gw.doctor.watch() as dr:
        for _ in range(2):
            z = embed(x)
            pair = ((z[:, None] - z[None]) ** 2).sum(-1).mean()
            zi = z.unsqueeze(1)
            pair2 = ((zi - z) ** 2).sum(-1).mean()
            kmeans = ((x[:, None] - centers) ** 2).sum(-1).min(1).values.mean()
            weighted = (torch.linspace(0.5, 1.5, 4) * z**2).mean()
            centred = (z - z.mean(1, keepdim=True)).pow(2).mean()
            sim = F.cross_entropy(z @ z.T, torch.arange(16)) + torch.cdist(z, z).mean()
            with torch.no_grad():
                metric = (embed(x)[:, :1] - x[:, 0]).abs().mean()  # a metric: not a loss
            (pair + pair2 + kmeans + weighted + centred + sim).backward()
    assert metric.shape == () and serious(dr) == []


# --- step-without-gradient ------------------------------------------------------------------


def run_loop(case):
    model = regressor()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 5), torch.randn(32, 1)
    before = [p.detach().clone() for p in model.parameters()]
    with gw.doctor.watch(steps=3) as dr:
        for i in range(3):
            if case in ("clean", "twice"):
                opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            if case == "between":
                opt.zero_grad()  # swg-between
            if case == "module":
                model.zero_grad()  # swg-module
            if case == "accumulate":
                if i % 2 == 1:
                    opt.step()
                    opt.zero_grad()
                continue
            opt.step()
            if case == "twice":
                opt.step()  # swg-twice
    after = list(model.parameters())
    return dr, [torch.equal(a, b) for a, b in zip(before, after, strict=True)]


@pytest.mark.parametrize(("case", "marker"), [("between", "swg-between"), ("module", "swg-module")])
def test_zero_grad_between_backward_and_step_is_named_and_the_step_changed_nothing(case, marker):
    dr, unchanged = run_loop(case)
    (f,) = serious(dr)
    assert (f.kind, f.line, f.data["subkind"]) == ("step-without-gradient", line_of(marker), "cleared")
    assert all(unchanged)  # the reference: plain SGD left every parameter as it was
    assert f.data["cleared"] == f.data["reached"] == 4


def test_a_second_step_with_no_backward_is_named_at_the_extra_step():
    dr, unchanged = run_loop("twice")
    (f,) = serious(dr)
    assert (f.kind, f.line, f.data["subkind"]) == ("step-without-gradient", line_of("swg-twice"), "no-backward")
    assert not any(unchanged)


@pytest.mark.parametrize("case", ["clean", "accumulate"])
def test_zeroing_before_backward_and_accumulation_are_not_steps_without_gradient(case):
    dr, unchanged = run_loop(case)
    assert serious(dr) == [] and not any(unchanged)


# --- graph-leak -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["iadd", "ema", "append", "item", "detach", "previous"])
def test_losses_kept_with_their_graph_are_a_graph_leak_numbers_are_not(case):
    model = regressor()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(32, 5), torch.randn(32, 1)
    total, history, ema, first = 0.0, [], None, None
    with gw.doctor.watch(steps=4) as dr:
        for _ in range(4):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            first = first or weakref.ref(loss)
            loss.backward()
            opt.step()
            if case == "iadd":
                total += loss  # leak-iadd
            elif case == "ema":
                ema = loss if ema is None else 0.9 * ema + 0.1 * loss  # leak-ema
            elif case == "append":
                history.append(loss)  # leak-append
            elif case == "item":
                total += loss.item()
            elif case == "detach":
                history.append(loss.detach())
            else:
                previous = loss  # noqa: F841
    gc.collect()
    found = serious(dr)
    if case in ("item", "detach", "previous"):
        assert found == [] and first() is None  # the reference: the first loss was freed
        return
    (f,) = found
    assert (f.kind, f.severity, f.line) == ("graph-leak", "warning", line_of(f"leak-{case}"))
    if case == "append":
        assert first() is not None and f.data["container"] == "history"  # still alive, held by the list
    else:
        kept = total if case == "iadd" else ema
        assert kept.grad_fn is not None and f.data["steps"] >= 2


# --- unscaled-clip --------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["no-unscale", "unscale", "disabled"])
def test_clipping_scaled_gradients_before_unscale(case):
    model = regressor()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", enabled=case != "disabled")
    x, y = torch.randn(32, 5), torch.randn(32, 1)
    norms = []
    with gw.doctor.watch(steps=2) as dr:
        for _ in range(2):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            scaler.scale(loss).backward()
            if case == "unscale":
                scaler.unscale_(opt)
            norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))  # clip
            scaler.step(opt)
            scaler.update()
    found = serious(dr)
    if case != "no-unscale":
        assert found == []
        return
    (f,) = found
    assert (f.kind, f.severity, f.line) == ("unscaled-clip", "warning", line_of("clip"))
    model.zero_grad()
    F.mse_loss(model(x), y).backward()
    plain = float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()])))
    assert norms[-1] > 1e3 * plain  # the reference: the norm that was clipped is the scaled one
    assert f.data["scaled"] == f.data["clipped"] == 4


# --- graph-break: reentrant checkpoint --------------------------------------------------------


class Checkpointed(nn.Module):
    def __init__(self, first_reentrant: bool):
        super().__init__()
        self.first_reentrant = first_reentrant
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(6, 6), nn.Tanh()) for _ in range(3))
        self.head = nn.Linear(6, 1)

    def forward(self, x):
        x = checkpoint(self.blocks[0], x, use_reentrant=self.first_reentrant)  # ckpt-first
        for block in self.blocks[1:]:
            x = checkpoint(block, x, use_reentrant=True)
        return self.head(x)


@pytest.mark.parametrize("first_reentrant", [True, False])
def test_a_reentrant_checkpoint_on_inputs_without_grad_is_one_graph_break_at_the_call(first_reentrant):
    torch.manual_seed(0)
    model = Checkpointed(first_reentrant)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 6), torch.randn(8, 1)
    state = global_state()
    with warnings.catch_warnings(), gw.doctor.watch(steps=2) as dr:
        warnings.simplefilter("ignore")
        for _ in range(2):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
    assert global_state() == state
    starved = {n for n, p in model.named_parameters() if p.grad is None}  # the reference: torch's own gradients
    if not first_reentrant:
        assert starved == set() and serious(dr) == []
        return
    assert starved == {f"blocks.{i}.{w}" for i in range(3) for w in ("0.weight", "0.bias")}
    (f,) = serious(dr)
    assert (f.kind, f.line, f.data["cut"]) == ("graph-break", line_of("ckpt-first"), "checkpoint")
    assert set(f.parameters) == starved and "use_reentrant=False" in f.fix


# --- mistakes at an epoch boundary, after the watched steps ------------------------------------


def test_mistakes_at_the_first_epoch_boundary_are_found_in_the_numerics_only_steps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(32, 5), torch.randn(32, 1)
    with gw.doctor.watch(steps=2, numerics_steps=8) as dr:
        for _epoch in range(2):
            for i in range(4):  # 4 batches per epoch: the boundary comes after the 2 watched steps
                opt.zero_grad()
                F.mse_loss(model(x[i * 8 : i * 8 + 8]), y[i * 8 : i * 8 + 8]).backward()
                opt.step()
            opt.step()  # epoch-extra-step
            model.eval()  # epoch-eval
            with torch.no_grad():
                F.mse_loss(model(x), y)
    found = {(f.kind, f.line) for f in serious(dr)}
    assert found == {("step-without-gradient", line_of("epoch-extra-step")), ("eval-mode", line_of("epoch-eval"))}
    assert dr.watched_steps == 2 and dr.steps == 8
