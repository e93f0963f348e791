"""gw.doctor.watch on inline training code: each kind, the legitimate code it must leave
alone, and no trace left behind."""

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradwise as gw
from gradwise.doctor import Finding
from tests.doctor.instrumentation import global_state
from tests.doctor.source import line_of


def kinds(findings: list[Finding]) -> list[str]:
    return sorted(f.kind for f in findings if f.severity in ("error", "warning"))


def only(findings, kind) -> Finding:
    hits = [f for f in findings if f.kind == kind]
    assert len(hits) == 1, findings
    return hits[0]


def test_argmax_graph_break_in_functional_code():
    torch.manual_seed(0)
    w = torch.randn(4, 3, requires_grad=True)
    codebook = torch.randn(3, 2)
    with gw.doctor.watch() as dr:
        for _ in range(2):
            logits = torch.randn(8, 4) @ w
            choice = codebook[logits.argmax(-1)]  # cut-argmax
            loss = choice.pow(2).sum().requires_grad_()  # bandaid
            loss.backward()
    assert kinds(dr.findings) == ["graph-break", "requires-grad-bandaid"]
    cut = only(dr.findings, "graph-break")
    assert (cut.file, cut.line) == (__file__, line_of("cut-argmax"))
    assert cut.parameters == ("w",) and "gw.ops.argmax_onehot" in cut.fix
    assert only(dr.findings, "requires-grad-bandaid").line == line_of("bandaid")
    assert w.grad is None  # the doctor only looks


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(5, 4)
        self.head = nn.Linear(4, 2)
        self.spare = nn.Linear(4, 2)  # created-spare

    def forward(self, x, cut=None):
        h = torch.relu(self.encoder(x))
        if cut == "detach":
            h = h.detach()  # cut-detach
        elif cut == "data":
            h = h.data  # cut-data
        elif cut == "no_grad":
            with torch.no_grad():
                h = self.encoder(x) * 2  # cut-no-grad
        return self.head(h)


@pytest.mark.parametrize("cut", ["detach", "data", "no_grad"])
def test_cuts_inside_a_module_name_the_line_and_the_parameters(cut):
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(list(model.encoder.parameters()) + list(model.head.parameters()), lr=0.1)
    with gw.doctor.watch() as dr:
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(model(torch.randn(6, 5), cut), torch.randint(0, 2, (6,))).backward()
            opt.step()
    found = only(dr.findings, "graph-break")
    assert found.line == line_of({"detach": "cut-detach", "data": "cut-data", "no_grad": "cut-no-grad"}[cut])
    assert set(found.parameters) == {"encoder.weight", "encoder.bias"}
    unused = only(dr.findings, "unused-parameter")
    assert unused.line == line_of("created-spare") and set(unused.parameters) <= {"spare.weight", "spare.bias"}


def test_legitimate_code_is_left_alone():
    """Accuracy with argmax, logging with .item(), a target network, frozen parameters,
    evaluation under no_grad, a straight-through estimator, log_softmax + nll_loss."""
    torch.manual_seed(0)
    online, target = nn.Linear(6, 3), nn.Linear(6, 3)
    target.load_state_dict(online.state_dict())
    frozen = nn.Linear(6, 6).requires_grad_(False)
    opt = torch.optim.Adam(online.parameters(), lr=1e-2)
    with gw.doctor.watch() as dr:
        for _ in range(3):
            x = frozen(torch.randn(16, 6))
            y = torch.randint(0, 3, (16,))
            logits = online(x)
            soft = torch.softmax(logits, -1)
            hard = F.one_hot(soft.argmax(-1), 3).float()
            st = hard - soft.detach() + soft
            loss = F.nll_loss(F.log_softmax(logits, -1), y) + (st - target(x).detach()).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            accuracy = (logits.argmax(-1) == y).float().mean().item()
            with torch.no_grad():
                for p, q in zip(target.parameters(), online.parameters(), strict=True):
                    p.mul_(0.9).add_(0.1 * q)
                online(torch.randn(4, 6))
    assert dr.findings == [], dr.report()
    assert 0 <= accuracy <= 1


def test_zero_gradient_from_round():
    torch.manual_seed(0)
    scale = torch.ones(3, requires_grad=True)
    with gw.doctor.watch() as dr:
        for _ in range(2):
            q = torch.round(torch.randn(8, 3) * scale)  # zero-round
            q.pow(2).sum().backward()
            scale.grad = None
    found = only(dr.findings, "zero-gradient")
    assert found.line == line_of("zero-round") and "gw.ops.round_ste" in found.fix
    assert found.parameters == ("scale",)


def test_missing_zero_grad_and_deliberate_accumulation():
    def train(zero_every, steps=4):
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        with gw.doctor.watch() as dr:
            for i in range(steps):
                model(torch.randn(4, 3)).pow(2).mean().backward()
                if (i + 1) % zero_every == 0:
                    opt.step()  # step-line
                    if zero_every > 1:
                        opt.zero_grad()
        return dr.findings

    accumulate = train(zero_every=2)
    assert accumulate == []
    never = train(zero_every=1)
    found = only(never, "missing-zero-grad")
    assert found.line == line_of("step-line") and set(found.parameters) == {"weight", "bias"}


def test_parameter_not_optimized_points_at_the_optimizer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    with gw.doctor.watch() as dr:
        opt = torch.optim.SGD(model[0].parameters(), lr=0.1)  # optimizer-line
        for _ in range(2):
            opt.zero_grad()
            model(torch.randn(4, 3)).pow(2).mean().backward()
            opt.step()
    found = only(dr.findings, "parameter-not-optimized")
    assert found.line == line_of("optimizer-line") and set(found.parameters) == {"1.weight", "1.bias"}


def test_loss_input_uses_the_shared_check():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    with gw.doctor.watch() as dr:
        probs = torch.softmax(model(torch.randn(8, 4)), -1)
        loss = nn.CrossEntropyLoss()(probs, torch.randint(0, 3, (8,)))  # loss-line
        loss.backward()
    found = only(dr.findings, "loss-input")
    assert found.line == line_of("loss-line") and found.severity == "error"


def test_stale_graph_is_explained_and_the_error_still_raised():
    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.raw = nn.Parameter(torch.zeros(3))
            self.gate = torch.sigmoid(self.raw)  # made-once

        def forward(self, x):
            return x * self.gate

    model = Gate()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        with gw.doctor.watch() as dr:
            for _ in range(2):
                model(torch.randn(2, 3)).sum().backward()
    found = only(dr.findings, "stale-graph")
    assert found.line == line_of("made-once") and "gw.constrain" in found.fix


def test_inplace_modification_is_explained():
    w = torch.randn(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        with gw.doctor.watch() as dr:
            y = torch.sigmoid(w * 2)
            y.mul_(2)  # in-place
            y.sum().backward()
    assert only(dr.findings, "inplace-modification").line == line_of("in-place")


def test_no_trace_is_left_also_when_the_block_raises():
    before = global_state()
    model = nn.Linear(2, 2)
    with gw.doctor.watch():
        model(torch.randn(1, 2)).sum().backward()
    assert global_state() == before
    with pytest.raises(ValueError, match="user error"):
        with gw.doctor.watch():
            model(torch.randn(1, 2)).sum().backward()
            raise ValueError("user error")
    assert global_state() == before
    assert not model._forward_hooks and not model._forward_pre_hooks and not model._backward_hooks


def test_losses_and_gradients_are_bit_identical_under_the_doctor():
    def run(doctor: bool):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        losses = []
        with gw.doctor.watch() if doctor else contextlib.nullcontext():
            for _ in range(3):
                opt.zero_grad()
                loss = F.cross_entropy(model(torch.randn(5, 1, 8, 8)), torch.randint(0, 3, (5,)))
                loss.backward()
                opt.step()
                losses.append(loss.detach())
        return torch.stack(losses), [p.detach().clone() for p in model.parameters()]

    plain_losses, plain_params = run(False)
    watched_losses, watched_params = run(True)
    assert torch.equal(plain_losses, watched_losses)
    assert all(torch.equal(a, b) for a, b in zip(plain_params, watched_params, strict=True))


def test_report_and_diagnose():
    model = nn.Linear(3, 1)

    def step(x):
        model(x).detach().sum().requires_grad_().backward()

    dr = gw.doctor.diagnose(step, torch.randn(4, 3), steps=2)
    text = dr.report()
    assert text.startswith("gradwise doctor: 2 finding(s) in 2 watched training step(s)")
    assert "ERROR graph-break at" in text and "fix:" in text
    assert gw.doctor.watch.__doc__ and set(gw.doctor.KINDS) >= {f.kind for f in dr.findings}
