"""The numerics checks on inline code: where the first NaN/Inf was born, in the forward and
in the backward, with its figures compared against plain torch computations, the look-alikes
they must leave alone, and nothing left behind."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradwise as gw
from tests.doctor.instrumentation import global_state
from tests.doctor.source import line_of


def nonfinite(dr):
    hits = [f for f in dr.findings if f.kind == "non-finite"]
    assert len(hits) <= 1, hits
    return hits[0] if hits else None


def serious(dr):
    return [f for f in dr.findings if f.severity in ("error", "warning")]


def test_log_of_an_underflowed_softmax_is_named_with_the_zero_count():
    torch.manual_seed(0)
    model = nn.Linear(6, 5)
    x, y = torch.randn(40, 6) * 200, torch.randint(0, 5, (40,))
    with gw.doctor.watch() as dr:
        probs = torch.softmax(model(x), -1)
        loss = -torch.log(probs).gather(1, y[:, None]).mean()  # log-of-softmax
        loss.backward()
    f = nonfinite(dr)
    assert f is not None and f.severity == "error" and f.line == line_of("log-of-softmax")
    zeros = int((probs == 0).sum())  # the reference: the same softmax, counted by hand
    assert zeros > 0 and f.data["zeros"] == zeros and f.data["negative"] == 0
    assert f.data["subkind"] == "forward" and f"{zeros:,} of 200 inputs are exactly 0" in f.message
    assert "log_softmax" in f.fix and set(f.parameters) == {"weight", "bias"}


def test_exp_overflow_reports_the_largest_input():
    w = torch.tensor([2.0, 0.5], requires_grad=True)
    x = torch.tensor([[50.0, 1.0], [10.0, 2.0], [1.0, 1.0]])
    with gw.doctor.watch() as dr:
        rate = torch.exp(x @ w)  # exp-overflow
        loss = rate.mean()
        loss.backward()
    f = nonfinite(dr)
    assert f.line == line_of("exp-overflow")
    assert f.data["largest_input"] == pytest.approx(100.5)  # 50 * 2 + 1 * 0.5
    assert f.data["count"] == 1 and f.data["value"] == "Inf"
    assert f.data["limit"] == pytest.approx(math.log(torch.finfo(torch.float32).max))


def test_zero_over_zero_names_the_constant_column():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    x = torch.randn(30, 4)
    x[:, 1] = 7.0
    with gw.doctor.watch() as dr:
        z = (x - x.mean(0)) / x.std(0)  # constant-column
        loss = model(z).pow(2).mean()
        loss.backward()
    f = nonfinite(dr)
    assert f.line == line_of("constant-column") and f.data["value"] == "NaN"
    assert f.data["zero_divisors"] == 1 and f.data["zero_over_zero"] == 30  # one column, 30 rows
    assert "column 1" in f.message and "+ 1e-8" in f.fix


def test_data_holding_nan_is_reported_where_the_tensor_was_made():
    model = nn.Linear(2, 1)
    with gw.doctor.watch() as dr:
        x = torch.tensor([[1.0, 2.0], [float("nan"), 0.0], [3.0, 1.0]])  # nan-data
        loss = model(x).sum()
        loss.backward()
    f = nonfinite(dr)
    assert f.line == line_of("nan-data") and f.data["subkind"] == "data" and f.data["count"] == 1


def test_first_birth_in_execution_order_wins_over_later_ones():
    w = torch.tensor([1.0, -1.0, 0.0], requires_grad=True)
    with gw.doctor.watch() as dr:
        a = torch.log(w * 0)  # first-birth
        b = torch.sqrt(w - 5)
        loss = (a + b).sum()
        loss.backward()
    assert nonfinite(dr).line == line_of("first-birth")


def test_backward_sqrt_at_zero_of_a_hand_written_norm():
    torch.manual_seed(0)
    enc = nn.Linear(3, 3)
    x = torch.randn(8, 3)
    with gw.doctor.watch() as dr:
        z = enc(x)
        d = ((z - z.roll(1, 0) * 0 - z) ** 2).sum(-1).sqrt()  # zero-norm
        loss = d.mean() + z.pow(2).mean()
        loss.backward()
    assert math.isfinite(loss.item()) and torch.isnan(enc.weight.grad).any()  # the plain fact
    f = nonfinite(dr)
    assert f.line == line_of("zero-norm") and f.data["subkind"] == "backward"
    assert f.data["zeros"] == 8 and f.data["op"] == "sqrt"
    assert set(f.parameters) == {"weight", "bias"} and "vector_norm" in f.fix


def test_backward_of_the_masked_out_branch_of_where():
    w = torch.tensor([0.5, -2.0, 3.0], requires_grad=True)
    with gw.doctor.watch() as dr:
        y = torch.where(w > 0, torch.sqrt(w), torch.zeros_like(w))  # where-branch
        loss = y.sum()
        loss.backward()
    f = nonfinite(dr)
    assert f.line == line_of("where-branch") and f.data["negative"] == 1
    assert "torch.where" in f.message and "safe where" in f.fix and f.parameters == ("w",)


def test_acos_at_one():
    w = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 1.0, 0.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    with gw.doctor.watch() as dr:
        unit = w / w.norm(dim=-1, keepdim=True)
        angle = torch.acos((unit * target).sum(-1))  # acos-one
        angle.sum().backward()
    assert torch.isinf(w.grad).any() or torch.isnan(w.grad).any()
    f = nonfinite(dr)
    assert f.line == line_of("acos-one") and f.data["at_one"] == 2 and "1 - 1e-7" in f.fix


def test_masks_with_minus_inf_nan_to_num_and_unused_nan_are_not_findings():
    torch.manual_seed(0)
    q = nn.Linear(4, 4)
    x = torch.randn(2, 5, 4)
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    with gw.doctor.watch() as dr:
        for _ in range(2):
            s = q(x) @ q(x).transpose(1, 2)
            s = s.masked_fill(pad[:, None, :], float("-inf"))
            att = F.softmax(s, -1)
            lse = torch.logsumexp(s, -1)
            unused = torch.log(x - 10)  # NaN that never reaches the loss
            cleaned = torch.nan_to_num(torch.log(x.abs() + 1), nan=0.0)
            loss = att.pow(2).mean() + lse.mean() + cleaned.mean() * 0
            loss.backward()
    assert torch.isnan(unused).all() and serious(dr) == []


def test_a_fully_masked_row_is_named_at_the_softmax():
    torch.manual_seed(0)
    w = torch.randn(3, 4, requires_grad=True)
    mask = torch.tensor([[False, True, True, True], [True, True, True, True], [False, False, True, True]])
    with gw.doctor.watch() as dr:
        s = w.masked_fill(mask, float("-inf"))
        p = torch.softmax(s, -1)  # full-mask
        loss = (p * torch.arange(4.0)).sum()
        loss.backward()
    f = nonfinite(dr)
    assert f.line == line_of("full-mask") and f.data["masked_rows"] == 1 and f.data["rows"] == 3


def test_losses_and_gradients_are_unchanged_and_nothing_is_left_behind():
    def run(watch):
        torch.manual_seed(0)
        m = nn.Linear(3, 2)
        x = torch.randn(6, 3)
        before = global_state()
        ctx = gw.doctor.watch() if watch else None
        if ctx is not None:
            dr = ctx.__enter__()
        z = m(x)
        loss = torch.where(z > 0, z.sqrt(), 0).sum()
        loss.backward(retain_graph=True)
        if ctx is not None:
            ctx.__exit__(None, None, None)
            sums = len(dr.stats.node_sums)
            loss.backward()  # the node hooks are gone: no more sums
            assert len(dr.stats.node_sums) == sums and global_state() == before
        return loss.detach(), m.weight.grad.clone()

    plain, watched = run(False), run(True)
    torch.testing.assert_close(watched[0], plain[0], rtol=0, atol=0)
    assert torch.equal(torch.isnan(watched[1]), torch.isnan(plain[1]))


def test_infinite_gradients_under_a_grad_scaler_are_the_scalers_business():
    w = torch.ones(3, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    with gw.doctor.watch() as dr:
        for _ in range(2):
            loss = (w * 1e34).sum()
            opt.zero_grad()
            scaler.scale(loss).backward()  # 1e34 * 65536 overflows: the scaler skips the step
            scaler.step(opt)
            scaler.update()
    assert scaler.get_scale() < 2.0**16 and serious(dr) == []


def _relu_net(bias: float, width: int = 32):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, width), nn.ReLU(), nn.Linear(width, 1))
    nn.init.constant_(net[0].bias, bias)  # bias-init
    return net


def test_dead_units_from_a_negative_bias_are_counted_against_a_plain_forward():
    x = torch.randn(64, 6)
    with gw.doctor.watch() as dr:  # made inside the watch: the init line is seen
        net = _relu_net(-3.0)
        opt = torch.optim.SGD(net.parameters(), lr=1e-3)
        for _ in range(3):
            loss = net(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    dead = int((~(net[:2](x) > 0).any(0)).sum())  # the reference: the same ReLU, counted by hand
    f = next(f for f in dr.findings if f.kind == "dead-units")
    assert dead > 0.8 * 32 and f.data["dead"] == dead and f.data["cause"] == "init"
    assert f.severity == "warning" and f.data["negative_bias"] == dead
    assert f"(set at line {line_of('bias-init')})" in f.message
    assert set(f.parameters) == {"0.weight", "0.bias"}


def test_normal_relu_sparsity_and_a_single_step_are_not_dead_units():
    x = torch.randn(64, 6)
    for bias, steps in ((0.0, 3), (-3.0, 1)):
        net = _relu_net(bias)
        with gw.doctor.watch() as dr:
            for _ in range(steps):
                net(x).pow(2).mean().backward()
        assert [f for f in dr.findings if f.kind == "dead-units"] == []


def _deep(activation, depth=8, std=None):
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        linear = nn.Linear(32, 32)
        if std is not None:
            nn.init.normal_(linear.weight, std=std)
        layers += [linear, activation()]
    return nn.Sequential(*layers, nn.Linear(32, 1))


def _relative_gradients(model, x):
    """The reference: |g| / |w| of each Linear weight after a plain backward."""
    model.zero_grad()
    model(x).pow(2).mean().backward()
    return [m.weight.grad.norm().item() / m.weight.norm().item() for m in model if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("activation, std, cause", [(nn.Sigmoid, None, "stacked"), (nn.Tanh, 0.01, "small-init")])
def test_vanishing_gradient_ratio_matches_a_plain_backward(activation, std, cause):
    x = torch.randn(64, 32)
    model = _deep(activation, std=std)
    reference = _relative_gradients(model, x)
    model.zero_grad()
    with gw.doctor.watch() as dr:
        model(x).pow(2).mean().backward()
    f = next(f for f in dr.findings if f.kind == "vanishing-gradient")
    last_half = sorted(reference[len(reference) // 2 :])
    assert f.data["ratio"] == pytest.approx(reference[0] / last_half[len(last_half) // 2], rel=1e-4)
    assert f.data["ratio"] < 1e-3 and "0.weight" in f.parameters and f.data["cause"] == cause


def test_healthy_deep_relu_and_residual_nets_have_no_vanishing_gradient():
    x = torch.randn(64, 32)
    for model in (
        _deep(nn.ReLU),
        nn.Sequential(*[nn.Sequential(nn.LayerNorm(32), nn.Linear(32, 32)) for _ in range(8)]),
    ):
        with gw.doctor.watch() as dr:
            model(x).pow(2).mean().backward()
        assert [f for f in dr.findings if f.kind == "vanishing-gradient"] == []


# --- exploding-gradient ------------------------------------------------------------------------


def _wide_relu(depth=6, width=128, std=1.0):
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        linear = nn.Linear(width, width)
        nn.init.normal_(linear.weight, std=std)  # normal-init
        nn.init.zeros_(linear.bias)
        layers += [linear, nn.ReLU()]
    return nn.Sequential(*layers)


def test_exploding_from_the_init_reports_the_growth_of_a_plain_forward_and_the_init_line():
    x = torch.randn(64, 128)
    with gw.doctor.watch() as dr:
        model = _wide_relu()  # its init runs under the watch, as in a script run by `gradwise doctor`
        model(x).pow(2).mean().backward()
    rms = []  # the reference: each Linear's output RMS in a plain forward
    hooks = [m.register_forward_hook(lambda m, i, o: rms.append(o.pow(2).mean().sqrt().item())) for m in model[::2]]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    f = next(f for f in dr.findings if f.kind == "exploding-gradient")
    assert f.severity == "error" and f.line == line_of("normal-init") and f.data["cause"] == "init"
    assert f.data["activation_growth"] == pytest.approx(rms[-1] / rms[0], rel=1e-4)
    assert f.data["layers"] == len(rms) - 1 and "10.weight" in f.parameters and "0.weight" not in f.parameters
    reference = math.sqrt(sum(p.grad.pow(2).sum().item() for p in model.parameters()))
    assert f.data["grad_norm"] == pytest.approx(reference, rel=1e-4)


def test_a_kaiming_init_and_a_clipped_large_gradient_are_not_exploding():
    model = _wide_relu(std=math.sqrt(2 / 128))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(64, 128)
    with gw.doctor.watch() as dr:
        for _ in range(3):
            loss = (model(x) - 1000.0).pow(2).mean()  # targets of large scale: a large gradient
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    assert serious(dr) == []


def _diverging_regression(lr):
    torch.manual_seed(0)
    x = torch.randn(256, 8) * 4.0
    y = x @ torch.randn(8, 1)
    model = nn.Linear(8, 1)
    return model, x, y


def test_exploding_from_the_step_size_names_the_optimizer_with_the_norms_of_a_plain_run():
    model, x, y = _diverging_regression(0.2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    reference_norms, reference_losses = [], []  # the reference: the same loop, plainly
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    for _ in range(4):
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        reference_norms.append(math.sqrt(sum(p.grad.pow(2).sum().item() for p in model.parameters())))
        reference_losses.append(loss.item())
        opt.step()
    model.load_state_dict(state)
    with gw.doctor.watch() as dr:
        opt = torch.optim.SGD(model.parameters(), lr=0.2)  # the-optimizer
        for _ in range(4):
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    f = next(f for f in dr.findings if f.kind == "exploding-gradient")
    assert f.line == line_of("the-optimizer") and f.data["cause"] == "step-size" and f.data["lr"] == [0.2]
    assert f.data["grad_norms"] == pytest.approx(reference_norms, rel=1e-4)
    assert f.data["losses"] == pytest.approx(reference_losses, rel=1e-4)
    assert reference_norms[-1] > 10 * reference_norms[0] and f.data["max_update_ratio"] > 1
    assert set(f.parameters) == {"weight", "bias"} and "lr=0.2" in f.message


def test_a_large_loss_in_steady_descent_is_not_exploding():
    model, x, y = _diverging_regression(0.0)
    y = y * 1e4  # a loss of about 1e9
    opt = torch.optim.SGD(model.parameters(), lr=0.005)  # below 2 / curvature: it converges
    with gw.doctor.watch() as dr:
        losses = []
        for _ in range(5):
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert losses[-1] < losses[0] and losses[0] > 1e8
    assert serious(dr) == []


def test_an_explosion_that_ends_in_nan_is_one_finding_that_says_where_the_nan_was_born():
    model, x, y = _diverging_regression(0.0)
    with gw.doctor.watch(steps=16) as dr:
        opt = torch.optim.SGD(model.parameters(), lr=50.0)  # the-huge-step
        for _ in range(16):
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    kinds = [f.kind for f in dr.findings]
    assert kinds == ["exploding-gradient"], dr.report()
    f = dr.findings[0]
    assert f.line == line_of("the-huge-step") and "then_non_finite" in f.data and "non-finite" in f.message


# --- the numerics-only steps after the watched ones ----------------------------------------------


def test_a_nan_born_after_the_watched_steps_is_found_in_the_numerics_only_steps():
    w = torch.tensor([1.0], requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.25)
    with gw.doctor.watch(steps=2, numerics_steps=8) as dr:
        for _ in range(10):
            loss = torch.log(w)  # later-log
            opt.zero_grad()
            loss.backward()
            opt.step()
    # the reference, by hand: w <- w - 0.25 / w gives 1, 0.75, 0.41667, -0.18333: log of a negative at step 4
    f = nonfinite(dr)
    assert f is not None and f.line == line_of("later-log") and f.step == 4 and f.data["negative"] == 1
    assert (dr.watched_steps, dr.steps) == (2, 4)  # stopped at the first non-finite value
    assert "Then 2 more step(s) were watched for non-finite values and loop mistakes only." in dr.report()


def test_the_numerics_only_steps_teach_the_other_checks_nothing():
    torch.manual_seed(0)
    x = torch.randn(8, 3)
    with gw.doctor.watch(steps=2, numerics_steps=6) as dr:
        model = nn.Linear(3, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):  # 2 watched steps, extended to the optimizer's second step
            loss = model(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        later = nn.Sequential(nn.Linear(3, 1), nn.Linear(3, 1))  # made after the watched steps
        opt = torch.optim.SGD(later.parameters(), lr=0.1)
        for _ in range(3):
            loss = later[0](x).round().mean().requires_grad_()  # a layer never called, a cut
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert dr.findings == [] and (dr.watched_steps, dr.steps) == (2, 6), dr.report()


def test_finite_gradients_whose_float32_norm_overflows_are_not_non_finite():
    torch.manual_seed(0)
    with gw.doctor.watch() as dr:
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        with torch.no_grad():
            model[0].weight.mul_(1e17)
        F.mse_loss(model(torch.randn(3, 4)), torch.zeros(3, 1)).backward()
    grad = model[2].weight.grad
    assert torch.isfinite(grad).all() and torch.isinf(grad.norm())  # the reference: finite, but its float32 norm is not
    assert nonfinite(dr) is None
    numbers = dr.stats.history[0]
    by_name = {dr.name(p): v for p, v in numbers.grad.items()}
    assert by_name["2.weight"] == pytest.approx(grad.double().norm().item(), rel=1e-6)


# --- eval-mode ---------------------------------------------------------------------------------


def test_steps_in_eval_mode_name_the_eval_call_and_train_again_clears_it():
    torch.manual_seed(0)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    with gw.doctor.watch() as dr:
        model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.2), nn.Linear(8, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for step in range(4):
            if step == 1:
                model.eval()  # left-in-eval
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    f = next(f for f in dr.findings if f.kind == "eval-mode")
    reference = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d | nn.Dropout)]  # by hand: 2
    assert f.line == line_of("left-in-eval") and len(f.data["modules"]) == len(reference) == 2
    assert f.data["kinds"] == ["BatchNorm1d", "Dropout"] and f.step == 2
    with gw.doctor.watch() as dr:
        model.eval()
        model.train()  # train again before the step: clean
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert [f for f in dr.findings if f.kind == "eval-mode"] == []


def test_a_float64_model_is_measured_in_float64():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    norms = []
    with gw.doctor.watch() as dr:
        for _ in range(2):
            opt.zero_grad()
            model(torch.randn(4, 3, dtype=torch.float64)).pow(2).mean().backward()
            norms.append({n: p.grad.norm().item() for n, p in model.named_parameters()})
            opt.step()
    assert dr.internal_errors == []  # a float32 norm of float64 tensors is refused by torch
    got = [{dr.name(p): v for p, v in n.grad.items()} for n in dr.stats.history]
    assert got == [pytest.approx(n, rel=1e-12) for n in norms]  # float64 precision
