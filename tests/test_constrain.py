"""gw.constrain: the value stays in its support through training, survives state_dict,
deepcopy, functional_call, torch.compile and DDP, and init round-trips."""

import copy
import textwrap

import pytest
import torch
from torch import nn
from torch.distributions import constraints as C

import gradwise as gw
from gradwise.errors import ArgumentError, ArgumentTypeError, UnsupportedError
from tests.gloo import WORKER_EXIT, run_workers


def holder(shape=(3,), value=0.5):
    m = nn.Module()
    m.p = nn.Parameter(torch.full(shape, value))
    return m


def corr_cholesky_value():
    corr = torch.tensor([[1.0, 0.3, -0.2], [0.3, 1.0, 0.4], [-0.2, 0.4, 1.0]])
    return torch.linalg.cholesky(corr)


# every supported constraint, with a value strictly inside its support
SUPPORTED = {
    "unit_interval": ("unit_interval", torch.tensor([0.1, 0.5, 0.97])),
    "positive": ("positive", torch.tensor([1e-3, 2.0, 40.0])),
    "nonnegative": ("nonnegative", torch.tensor([0.5, 2.0, 1.0])),
    "real": ("real", torch.tensor([-3.0, 0.0, 5.0])),
    "real_vector": ("real_vector", torch.tensor([-3.0, 0.0, 5.0])),
    "simplex": ("simplex", torch.tensor([0.2, 0.3, 0.5])),
    "lower_cholesky": ("lower_cholesky", torch.tensor([[2.0, 0.0, 0.0], [0.5, 1.0, 0.0], [-1.0, 0.3, 0.7]])),
    "positive_definite": ("positive_definite", torch.tensor([[2.0, 0.5, 0.1], [0.5, 1.0, 0.2], [0.1, 0.2, 3.0]])),
    "corr_cholesky": ("corr_cholesky", corr_cholesky_value()),
    "interval": (C.interval(-2.0, 3.0), torch.tensor([-1.9, 0.0, 2.9])),
    "half_open_interval": (C.half_open_interval(-1.0, 1.0), torch.tensor([-1.0 + 1e-3, 0.2, 0.9])),
    "greater_than": (C.greater_than(1.5), torch.tensor([1.6, 3.0, 10.0])),
    "greater_than_eq": (C.greater_than_eq(1.5), torch.tensor([1.6, 3.0, 10.0])),
    "less_than": (C.less_than(-1.0), torch.tensor([-1.1, -3.0, -10.0])),
    "cat": (C.cat([C.positive, C.unit_interval], 0, [2, 1]), torch.tensor([0.5, 4.0, 0.25])),
    "orthogonal": (
        "orthogonal",
        torch.nn.init.orthogonal_(torch.empty(3, 3), generator=torch.Generator().manual_seed(0)),
    ),
}


def test_every_alias_is_tested():
    assert set(gw.constrain.ALIASES) <= set(SUPPORTED)


@pytest.mark.parametrize("name", SUPPORTED)
def test_init_round_trips(name):
    constraint, value = SUPPORTED[name]
    m = holder(value.shape, 0.0)
    gw.constrain(m, "p", constraint, init=value)
    torch.testing.assert_close(m.p.detach(), value, rtol=1e-5, atol=1e-5)
    assert list(gw.constrain.values(m)) == ["p"]
    # and with the value already in place (no init)
    m = holder(value.shape, 0.0)
    with torch.no_grad():
        m.p.copy_(value)
    gw.constrain(m, "p", constraint)
    torch.testing.assert_close(m.p.detach(), value, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("constraint", "inside"),
    [
        ("unit_interval", lambda p: ((p > 0) & (p < 1)).all()),
        ("positive", lambda p: (p > 0).all()),
        ("simplex", lambda p: (p >= 0).all() and torch.allclose(p.sum(), torch.tensor(1.0))),
        (C.interval(2.0, 3.0), lambda p: ((p > 2) & (p < 3)).all()),
    ],
)
def test_training_keeps_the_value_in_the_support(constraint, inside):
    m = holder((4,), 0.0)
    start = {"simplex": torch.full((4,), 0.25), "unit_interval": 0.5, "positive": 1.0}.get(constraint, 2.5)
    gw.constrain(m, "p", constraint, init=start)
    target = torch.tensor([5.0, -5.0, 0.7, 0.1])  # mostly outside the support: pushes on the boundary
    opt = torch.optim.Adam(m.parameters(), lr=0.1)
    for _ in range(300):
        opt.zero_grad()
        loss = ((m.p - target) ** 2).sum()
        loss.backward()  # a new graph every step: no "backward through the graph a second time"
        opt.step()
        assert inside(m.p.detach())
    assert torch.isfinite(m.parametrizations.p.original).all()


def test_init_transform_once_fails_and_constrain_works():
    """The bug the constraint fixes: the transform applied once in __init__."""

    class Once(nn.Module):
        def __init__(self):
            super().__init__()
            self.raw = nn.Parameter(torch.zeros(()))
            self.x = torch.sigmoid(self.raw)

    m = Once()
    (m.x - 0.9).pow(2).backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        (m.x - 0.9).pow(2).backward()
    m = holder((), 0.5)
    gw.constrain(m, "p", "unit_interval")
    opt = torch.optim.SGD(m.parameters(), lr=10.0)
    for _ in range(200):
        opt.zero_grad()
        (m.p - 0.9).pow(2).backward()
        opt.step()
    assert abs(m.p.item() - 0.9) < 1e-3


def test_state_dict_round_trip_is_identical():
    m = holder((5,), 0.0)
    gw.constrain(m, "p", "simplex", init=torch.tensor([0.1, 0.2, 0.3, 0.15, 0.25]))
    with torch.no_grad():
        m.parametrizations.p.original.add_(torch.randn(4))
    state = m.state_dict()
    assert set(state) == {"parametrizations.p.original"}
    fresh = holder((5,), 0.2)
    gw.constrain(fresh, "p", "simplex")
    fresh.load_state_dict(state)
    assert torch.equal(fresh.p, m.p)


def test_deepcopy_is_independent():
    m = holder((3,), 0.3)
    gw.constrain(m, "p", "unit_interval")
    twin = copy.deepcopy(m)
    assert torch.equal(twin.p, m.p)
    with torch.no_grad():
        twin.parametrizations.p.original.add_(1.0)
    assert not torch.equal(twin.p, m.p)
    assert gw.constrain.values(twin).keys() == {"p"}


def test_functional_call_uses_the_given_unconstrained_tensor():
    m = holder((3,), 0.3)
    gw.constrain(m, "p", "positive")
    raw = torch.tensor([0.0, 1.0, -1.0], requires_grad=True)

    class Reader(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner.p * x

    reader = Reader(m)
    out = torch.func.functional_call(reader, {"inner.parametrizations.p.original": raw}, (torch.ones(3),))
    torch.testing.assert_close(out, torch.exp(raw))
    out.sum().backward()
    torch.testing.assert_close(raw.grad, torch.exp(raw.detach()))


def test_torch_compile_matches_eager():
    torch._dynamo.reset()
    lin = nn.Linear(4, 3)
    gw.constrain(lin, "bias", "positive", init=torch.tensor([0.5, 1.0, 2.0]))
    x = torch.randn(6, 4)
    eager = lin(x)
    eager.sum().backward()
    grads = [p.grad.clone() for p in lin.parameters()]
    lin.zero_grad()
    compiled = torch.compile(lin)(x)
    compiled.sum().backward()
    torch.testing.assert_close(compiled, eager)
    for p, g in zip(lin.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, g)


def test_cached_reads_once():
    m = holder((3,), 0.5)
    gw.constrain(m, "p", "unit_interval")
    with gw.constrain.cached():
        assert m.p is m.p
    assert m.p is not m.p


def test_values_and_unconstrain():
    net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    gw.constrain(net[0], "bias", "positive", init=1.5)
    gw.constrain(net[1], "weight", C.interval(-0.1, 0.1), init=0.05)
    values = gw.constrain.values(net)
    assert set(values) == {"0.bias", "1.weight"}
    torch.testing.assert_close(values["0.bias"], torch.full((3,), 1.5))
    assert not values["0.bias"].requires_grad
    gw.constrain.unconstrain(net[0], "bias")
    assert type(net[0].bias) is nn.Parameter
    torch.testing.assert_close(net[0].bias.detach(), torch.full((3,), 1.5))
    assert set(gw.constrain.values(net)) == {"1.weight"}


def test_error_texts():
    with pytest.raises(ArgumentError) as info:
        gw.constrain(holder(), "p", "unit")
    text = str(info.value)
    assert text.startswith("constrain: constraint must be one of 'corr_cholesky', 'lower_cholesky'")
    for alias in gw.constrain.ALIASES:  # derived from the supported set
        assert repr(alias) in text
    assert "(got 'unit'); did you mean 'unit_interval'?" in text

    with pytest.raises(
        UnsupportedError, match=r"no bijection onto IntegerInterval.*nearest supported constraint is interval\(a, b\)"
    ):
        gw.constrain(holder(), "p", C.integer_interval(0, 3))
    with pytest.raises(UnsupportedError, match="nearest supported constraint is positive_definite"):
        gw.constrain(holder((3, 3)), "p", C.symmetric)

    with pytest.raises(ArgumentError, match=r"constrain: init lies outside the support of positive at \[1\]: -2"):
        gw.constrain(holder(), "p", "positive", init=torch.tensor([1.0, -2.0, 3.0]))
    with pytest.raises(
        ArgumentError, match=r"the current value of p lies outside the support of unit_interval at \[2\]: 1.5"
    ):
        m = holder()
        with torch.no_grad():
            m.p[2] = 1.5
        gw.constrain(m, "p", "unit_interval")
    with pytest.raises(ArgumentError, match=r"init lies on the boundary of nonnegative \(at \[0\]: 0\)"):
        gw.constrain(holder(), "p", "nonnegative", init=0.0)
    with pytest.raises(ArgumentError, match=r"init of shape \(2,\) does not broadcast to the parameter's shape \(3,\)"):
        gw.constrain(holder(), "p", "positive", init=torch.ones(2))
    with pytest.raises(ArgumentError, match="is not orthogonal"):
        gw.constrain(holder((3, 3)), "p", "orthogonal")
    with pytest.raises(ArgumentError, match=r"must be an nn.Parameter"):
        gw.constrain(nn.BatchNorm1d(3), "running_mean", "positive")
    with pytest.raises(ArgumentTypeError, match=r"constraint must be a torch.distributions.constraints object"):
        gw.constrain(holder(), "p", 3)
    m = holder()
    gw.constrain(m, "p", "positive")
    with pytest.raises(ArgumentError, match="already parametrized"):
        gw.constrain(m, "p", "positive")
    with pytest.raises(ArgumentError, match=r"is not constrained by gw.constrain"):
        gw.constrain.unconstrain(nn.Linear(2, 2), "weight")


DDP_WORKER = (
    textwrap.dedent(
        """
    import os, sys, torch, torch.distributed as dist
    from torch import nn
    import gradwise as gw

    rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    gw.constrain(model, "weight", "simplex", init=torch.tensor([[0.2, 0.3, 0.5]]))
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, generator=g)
    y = x @ torch.tensor([0.7, 0.1, 0.2]) + 0.3
    shard = slice(rank * 4, rank * 4 + 4)
    for _ in range(25):
        opt.zero_grad()
        loss = ((ddp(x[shard]).squeeze(-1) - y[shard]) ** 2).mean()
        loss.backward()
        opt.step()
    torch.save(gw.constrain.values(model), out)
    """
    )
    + WORKER_EXIT
)


def test_ddp_over_two_gloo_processes_matches_one_process(tmp_path):
    ranks = run_workers(tmp_path, DDP_WORKER, 2)
    assert torch.equal(ranks[0]["weight"], ranks[1]["weight"])
    # one process on the whole batch: DDP averages the two shards' mean gradients, the same thing
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    gw.constrain(model, "weight", "simplex", init=torch.tensor([[0.2, 0.3, 0.5]]))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, generator=g)
    y = x @ torch.tensor([0.7, 0.1, 0.2]) + 0.3
    for _ in range(25):
        opt.zero_grad()
        ((model(x).squeeze(-1) - y) ** 2).mean().backward()
        opt.step()
    torch.testing.assert_close(ranks[0]["weight"], model.weight.detach(), rtol=1e-5, atol=1e-6)
    assert torch.allclose(ranks[0]["weight"].sum(), torch.tensor(1.0))


@pytest.mark.parametrize(
    ("constraint", "start", "outside", "boundary", "inside"),
    [
        ("nonnegative", [1.0, 2.0], [1.0, -1.0], [0.0, 1.0], [0.5, 3.0]),
        ("unit_interval", [0.5, 0.5], [0.5, 1.5], [1.0, 0.5], [0.25, 0.75]),
        ("simplex", [0.2, 0.8], [1.2, -0.2], [1.0, 0.0], [0.4, 0.6]),
    ],
)
def test_assignment_is_checked_as_init_is(constraint, start, outside, boundary, inside):
    module = torch.nn.Module()
    module.p = torch.nn.Parameter(torch.tensor(start))
    gw.constrain(module, "p", constraint)
    with pytest.raises(ArgumentError, match=f"the value assigned to Module.p lies outside the support of {constraint}"):
        module.p = torch.tensor(outside)
    with pytest.raises(ArgumentError, match=f"the value assigned to Module.p lies on the boundary of {constraint}"):
        module.p = torch.tensor(boundary)
    assert torch.allclose(module.p, torch.tensor(start))  # unchanged by the refused assignments
    module.p = torch.tensor(inside)
    assert torch.allclose(module.p, torch.tensor(inside), atol=1e-6)
    (module.p * torch.tensor([1.0, 2.0])).sum().backward()  # and it still learns
    assert module.parametrizations.p.original.grad.abs().sum() > 0


def test_a_value_on_the_boundary_of_an_open_support_is_refused_without_init():
    layer = torch.nn.Linear(2, 1)
    with torch.no_grad():
        layer.bias.fill_(1.0)
    with pytest.raises(ArgumentError, match=r"the current value of bias lies on the boundary of unit_interval .*init"):
        gw.constrain(layer, "bias", "unit_interval")
    gw.constrain(layer, "bias", "unit_interval", init=0.5)
    assert layer.bias.item() == pytest.approx(0.5)
