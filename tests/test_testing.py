"""gradwise.testing.check_function: it passes correct Functions, fails each classic mistake
with a message that names it, and checks gradwise's own ops against their surrogates."""

import pytest
import torch

import gradwise as gw
from gradwise.errors import ArgumentError, ArgumentTypeError, FunctionCheckError
from gradwise.ops import _noise
from gradwise.testing import CHECKS, check_function

FAST = [c for c in CHECKS if c != "compile"]  # compile is exercised by a few tests only


class Linear(torch.autograd.Function):
    """The textbook linear layer (as in PyTorch's "Extending PyTorch" notes)."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        return x @ w.T + b

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad @ w
        if ctx.needs_input_grad[1]:
            grad_w = grad.T @ x
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b


class LinearFunctorch(torch.autograd.Function):
    """The same, written for torch.func (setup_context, generated vmap rule)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, w, b):
        return x @ w.T + b

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w, _ = inputs
        ctx.save_for_backward(x, w)

    backward = Linear.backward


class TransposedGradW(Linear):
    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        return grad @ w, x.T @ grad, grad.sum(0)  # x.T @ grad is grad_w transposed


class MissingBiasGrad(Linear):
    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        return grad @ w, grad.T @ x, None


class WrongShapeGrad(Linear):
    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        return grad @ w, grad.T @ x, grad.sum(0, keepdim=True).T  # (out, 1) instead of (out,)


class MissingNoneForScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x * scale

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale  # forgot the None for `scale`


class TensorOnCtx(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.x = x  # instead of ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        return 2 * ctx.x * grad


def linear_inputs(square=False):
    g = torch.Generator().manual_seed(0)
    n_out = 4 if square else 3
    return torch.randn(5, 4, generator=g), torch.randn(n_out, 4, generator=g), torch.randn(n_out, generator=g)


def test_textbook_linear_passes_every_check():
    report = check_function(Linear.apply, *linear_inputs(), fast=False)
    assert report.ok, report
    statuses = {c.name: c.status for c in report.checks}
    assert [c.name for c in report.checks] == list(CHECKS)
    assert statuses["surrogate"] == "skipped"
    assert statuses["vmap"] == "skipped" and "setup_context" in report["vmap"].message
    for name in ("gradcheck", "gradgradcheck", "needs_input_grad", "dtypes", "compile", "mutation"):
        assert statuses[name] == "pass", report


def test_functorch_style_linear_passes_vmap_too():
    report = check_function(LinearFunctorch.apply, *linear_inputs(), checks=FAST)
    assert report.ok, report
    assert report["vmap"].status == "pass"


def test_wrong_transpose_names_the_input_and_the_size():
    report = check_function(TransposedGradW.apply, *linear_inputs(square=True), checks=["gradcheck"])
    assert not report.ok
    message = report["gradcheck"].message
    assert "input 1 (shape (4, 4))" in message and "max |difference|" in message
    assert "transposed" in message
    # the reported difference is the true one, computed independently here
    x = linear_inputs(square=True)[0]
    ct = torch.randn(5, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    right = ct.T @ x.double()
    wrong = x.double().T @ ct
    assert f"{(right - wrong).abs().max().item():.3g}" in message


def test_missing_bias_gradient():
    report = check_function(MissingBiasGrad.apply, *linear_inputs(), checks=["gradcheck"])
    assert not report.ok
    assert "input 2 (shape (3,)): backward returned no gradient (None)" in report["gradcheck"].message


def test_wrong_shape_gradient():
    report = check_function(WrongShapeGrad.apply, *linear_inputs(), checks=["gradcheck", "needs_input_grad"])
    assert not report.ok
    assert "gradient of shape (3, 1) for argument 2 of shape (3,)" in report["needs_input_grad"].message
    assert report["gradcheck"].status == "fail"


def test_missing_none_for_non_tensor_argument():
    report = check_function(MissingNoneForScale.apply, torch.randn(3), 2.0, checks=["gradcheck", "needs_input_grad"])
    assert "returned 1 value(s) for 2 forward argument(s): return None for the non-tensor argument 1 (float)" in (
        report["needs_input_grad"].message
    )
    assert "incorrect number of gradients" in report["gradcheck"].message
    assert "return grad_x, None" in report["gradcheck"].message


def test_tensor_kept_on_ctx():
    report = check_function(TensorOnCtx.apply, torch.randn(3), checks=["gradcheck", "save_for_backward"])
    assert report["gradcheck"].status == "pass"
    assert report["save_for_backward"].status == "fail"
    assert "ctx.x holds a tensor; save it with ctx.save_for_backward" in report["save_for_backward"].message


def test_gradient_for_unneeded_input_is_reported():
    class Unguarded(Linear):
        @staticmethod
        def backward(ctx, grad):
            x, w = ctx.saved_tensors
            return grad @ w, grad.T @ x, grad.sum(0)

    report = check_function(Unguarded.apply, *linear_inputs(), checks=["gradcheck", "needs_input_grad"])
    assert report["gradcheck"].status == "pass"
    assert "argument(s) 0, 1, 2 with ctx.needs_input_grad False" in report["needs_input_grad"].message
    # wasted work, not a wrong gradient: advice, and the report is still ok
    assert report["needs_input_grad"].status == "advice"
    assert report.ok and [c.name for c in report.advice] == ["needs_input_grad"]
    assert str(report).startswith("check_function(Unguarded.apply): ok, 1 advice")


def test_second_derivative_that_lies():
    class Square(_Square):
        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return 2 * x.detach() * grad + 0 * x  # first derivative right, second derivative 0

    report = check_function(Square.apply, torch.randn(4), checks=["gradcheck", "gradgradcheck"])
    assert report["gradcheck"].status == "pass"
    assert report["gradgradcheck"].status == "fail"


def test_mutation_of_an_input_is_caught():
    class AddInPlace(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            x.add_(1.0)
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            return grad * 2

    report = check_function(AddInPlace.apply, torch.randn(3), checks=["mutation"])
    assert report["mutation"].status == "fail"
    assert "input 0 (shape (3,)) is modified in place by forward (max change 1)" in report["mutation"].message


def test_unseeded_randomness_is_caught():
    def noisy(x):
        return x + torch.randn(x.shape, generator=torch.Generator().manual_seed(torch.seed()))

    report = check_function(noisy, torch.randn(3), checks=["determinism"])
    assert report["determinism"].status == "fail"
    seeded = check_function(lambda x: x + torch.randn_like(x), torch.randn(3), checks=["determinism"])
    assert seeded["determinism"].status == "pass"


def test_low_precision_overflow_is_caught():
    report = check_function(lambda x: x * 1e5, torch.randn(4), checks=["dtypes"])
    assert report["dtypes"].status == "fail"
    assert "float16 vs float64 differs" in report["dtypes"].message


def test_layout_assumption_is_caught():
    class AssumesContiguous(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            flat = torch.as_strided(x, (x.numel(),), (1,))  # reads the storage as if contiguous
            return flat.reshape(x.shape) * 2

        @staticmethod
        def backward(ctx, grad):
            return grad * 2

    report = check_function(AssumesContiguous.apply, torch.randn(3, 4), checks=["non_contiguous"])
    assert report["non_contiguous"].status == "fail"


def test_wrong_vmap_rule_is_caught():
    class Triple(torch.autograd.Function):
        @staticmethod
        def forward(x):
            return x * 3

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, grad):
            return grad * 3

        @staticmethod
        def vmap(info, in_dims, x):
            return x * 2, in_dims[0]  # wrong

    report = check_function(Triple.apply, torch.randn(3), checks=["vmap"])
    assert report["vmap"].status == "fail"


def test_straight_through_without_surrogate_explains_itself():
    report = check_function(lambda x: gw.ops.round_ste(x * 3), torch.randn(6), checks=["gradcheck"])
    assert report["gradcheck"].status == "fail"
    assert "numerical gradient is zero everywhere" in report["gradcheck"].message
    assert "surrogate=" in report["gradcheck"].message


def _gumbel(shape, seed):
    return _noise.gumbel(shape, dtype=torch.float64, device="cpu", generator=torch.Generator().manual_seed(seed))


def _reinmax_surrogate(logits, tau):
    hard = torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
    pi_0 = torch.softmax(logits, -1)
    pi_half = (torch.softmax(logits / tau, -1) + hard) / 2
    pi_1 = torch.softmax((torch.log(pi_half) - logits).detach() + logits, -1)
    pi_2 = 2 * pi_1 - 0.5 * pi_0
    return pi_2 - pi_2.detach() + hard


X = torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
SEEDED = torch.Generator

OPS_WITH_SURROGATES = {
    "argmax_onehot/st": (lambda x: gw.ops.argmax_onehot(x, estimator="st"), lambda x: x),
    "argmax_onehot/softmax": (
        lambda x: gw.ops.argmax_onehot(x, tau=0.5),
        lambda x: torch.softmax(x / 0.5, -1),
    ),
    "argmax_onehot/reinmax": (
        lambda x: gw.ops.argmax_onehot(x, estimator="reinmax", tau=2.0),
        lambda x: _reinmax_surrogate(x, 2.0),
    ),
    "topk_mask/softmax": (lambda x: gw.ops.topk_mask(x, 3), lambda x: 3 * torch.softmax(x, -1)),
    "sample_onehot/gumbel": (
        lambda x: gw.ops.sample_onehot(x, tau=0.7, generator=SEEDED().manual_seed(5)),
        lambda x: torch.softmax((x + _gumbel(x.shape, 5)) / 0.7, -1),
    ),
    "gumbel_topk/gumbel": (
        lambda x: gw.ops.gumbel_topk(x, 2, estimator="gumbel", generator=SEEDED().manual_seed(5)),
        lambda x: 2 * torch.softmax(x + _gumbel(x.shape, 5), -1),
    ),
    "gumbel_softmax/hard": (
        lambda x: gw.ops.gumbel_softmax(x, 0.5, hard=True, generator=SEEDED().manual_seed(2)),
        lambda x: torch.softmax((x + _gumbel(x.shape, 2)) / 0.5, -1),
    ),
    "round_ste/clip": (lambda x: gw.ops.round_ste(x * 3, clip=(-2, 2)), lambda x: (x * 3).clamp(-2, 2)),
    "sign_ste/clip": (lambda x: gw.ops.sign_ste(x, clip=1.0), lambda x: x.clamp(-1, 1)),
}


@pytest.mark.parametrize("name", OPS_WITH_SURROGATES)
def test_gradwise_ops_pass_with_their_surrogates(name):
    fn, surrogate = OPS_WITH_SURROGATES[name]
    report = check_function(fn, X, surrogate=surrogate, checks=FAST)
    assert report.ok, report
    assert report["surrogate"].status == "pass"
    gradcheck = report["gradcheck"]
    assert gradcheck.status == "skipped"
    assert "torch.autograd.gradcheck: returns False" in gradcheck.message
    assert "piecewise constant" in gradcheck.message
    # and plain gradcheck does fail on it, as the report says
    x64 = X.double().requires_grad_(True)
    assert not torch.autograd.gradcheck(fn, (x64,), raise_exception=False)


def test_gradwise_op_under_compile():
    fn, surrogate = OPS_WITH_SURROGATES["argmax_onehot/softmax"]
    report = check_function(fn, X, surrogate=surrogate, checks=["surrogate", "compile"])
    assert report.ok, report
    assert report["compile"].status == "pass"


def test_gumbel_softmax_soft_passes_plain_gradcheck():
    report = check_function(
        lambda x: gw.ops.gumbel_softmax(x, 0.5, generator=SEEDED().manual_seed(0)), X, checks=["gradcheck"]
    )
    assert report["gradcheck"].status == "pass", report


def test_a_wrong_surrogate_fails():
    fn, _ = OPS_WITH_SURROGATES["argmax_onehot/softmax"]
    report = check_function(fn, X, surrogate=lambda x: torch.softmax(x, -1), checks=["surrogate"])  # tau 1, not 0.5
    assert report["surrogate"].status == "fail"
    assert "input 0 (shape (4, 6)): backward differs from the surrogate's gradient" in report["surrogate"].message


def test_no_side_effects_on_inputs_rng_and_grad_mode():
    x, w, b = linear_inputs()
    w.requires_grad_(True)
    before = (x.clone(), w.clone(), b.clone())
    rng = torch.get_rng_state()
    with torch.no_grad():
        report = check_function(Linear.apply, x, w, b, checks=FAST)
        assert not torch.is_grad_enabled()
    assert report.ok, report
    assert torch.equal(torch.get_rng_state(), rng)
    for t, old in zip((x, w, b), before, strict=True):
        assert torch.equal(t, old) and t.grad is None
    assert w.requires_grad and not x.requires_grad


def test_only_inputs_requiring_grad_are_checked_when_some_do():
    x, w, b = linear_inputs()
    report = check_function(MissingBiasGrad.apply, x, w.requires_grad_(True), b, checks=["gradcheck"])
    assert report.ok, report  # the bias, whose gradient is missing, is not asked for


def test_report_text_and_raise():
    report = check_function(MissingBiasGrad.apply, *linear_inputs(), checks=["gradcheck", "mutation"])
    text = str(report)
    assert text.splitlines()[0] == "check_function(MissingBiasGrad.apply): 1 check(s) failed"
    assert "  fail     gradcheck" in text and "  pass     mutation" in text
    with pytest.raises(FunctionCheckError) as info:
        report.raise_if_failed()
    assert str(info.value) == text
    assert isinstance(info.value, AssertionError)
    with pytest.raises(AssertionError, match="input 2"):
        gw.testing.assert_function_ok(MissingBiasGrad.apply, *linear_inputs(), checks=["gradcheck"])
    assert gw.testing.assert_function_ok(Linear.apply, *linear_inputs(), checks=["gradcheck"]).ok


def test_argument_errors():
    with pytest.raises(ArgumentTypeError, match="check_function: fn must be callable"):
        check_function(3, torch.randn(2))
    with pytest.raises(
        ArgumentTypeError, match=r"check_function: checks must be a list of check names .* \['gradcheck'\]"
    ):
        check_function(torch.sin, torch.randn(2), checks="gradcheck")
    with pytest.raises(ArgumentError, match="check_function: checks must be one of 'gradcheck', 'gradgradcheck'"):
        check_function(torch.sin, torch.randn(2), checks=["gradient"])
    with pytest.raises(ArgumentError, match="check_function: no input is a floating-point tensor"):
        check_function(torch.sin, torch.arange(3))
    with pytest.raises(ArgumentError, match="check_function: give at least one example input"):
        check_function(torch.sin)
    with pytest.raises(ArgumentTypeError, match="check_function: surrogate must be callable or None"):
        check_function(torch.sin, torch.randn(2), surrogate="softmax")


class _Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


def test_a_backward_on_detached_tensors_fails_the_double_backward_with_the_fix():
    class Detached(_Square):
        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return 2 * x.detach() * grad

    x = torch.randn(5, dtype=torch.float64)
    report = check_function(Detached.apply, x, checks=["gradcheck", "gradgradcheck"])
    assert report["gradcheck"].status == "pass"
    assert report["gradgradcheck"].status == "fail"
    assert "@torch.autograd.function.once_differentiable" in report["gradgradcheck"].message
    # the reference: torch's own gradgradcheck fails on it too
    with pytest.raises(RuntimeError):
        torch.autograd.gradgradcheck(Detached.apply, (x.clone().requires_grad_(),))


def test_once_differentiable_and_a_true_second_derivative_are_not_failures():
    from torch.autograd.function import once_differentiable

    class Once(_Square):
        @staticmethod
        @once_differentiable
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return 2 * x * grad

    x = torch.randn(5, dtype=torch.float64)
    once = check_function(Once.apply, x, checks=["gradgradcheck"])
    assert once["gradgradcheck"].status == "skipped" and "once_differentiable" in once["gradgradcheck"].message
    plain = check_function(_Square.apply, x, checks=["gradgradcheck"])
    assert plain["gradgradcheck"].status == "pass"
    assert torch.autograd.gradgradcheck(_Square.apply, (x.clone().requires_grad_(),))


def test_a_missing_factor_is_named():
    class Half(_Square):
        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return x * grad

    report = check_function(Half.apply, torch.randn(6, dtype=torch.float64), checks=["gradcheck"])
    assert report["gradcheck"].status == "fail"
    assert "0.5 x the numerical one everywhere" in report["gradcheck"].message


def test_a_surrogate_that_gives_every_class_the_same_gradient_fails():
    class RowConstant(torch.autograd.Function):
        @staticmethod
        def forward(ctx, logits):
            return logits.argmax(-1, keepdim=True).to(logits.dtype)

        @staticmethod
        def backward(ctx, grad):
            return grad.expand(-1, 5)

    logits = torch.randn(4, 5)
    report = check_function(RowConstant.apply, logits, checks=["surrogate"])
    assert report["surrogate"].status == "fail"
    assert "same gradient" in report["surrogate"].message
    # the reason, checked independently: a row-constant step never changes the argmax
    step = torch.randn(4, 1).expand(4, 5) * 100
    assert torch.equal((logits + step).argmax(-1), logits.argmax(-1))
    # a correct Function whose true gradient is constant along a row (a sum) is not flagged
    total = check_function(lambda x: x.sum(-1), torch.randn(4, 5, dtype=torch.float64), checks=["surrogate"])
    assert total["surrogate"].status == "skipped"


def test_one_root_cause_is_reported_once():
    class Transposed(Linear):
        @staticmethod
        def backward(ctx, grad):
            x, w = ctx.saved_tensors
            return grad @ w, (grad.T @ x).T, grad.sum(0)

    report = check_function(Transposed.apply, *linear_inputs())
    messages = [c.message for c in report.failed]
    full = [m for m in messages if "the same error as" not in m]
    assert len(full) == len(set(full))  # no failure text twice
    assert any("the same error as the 'gradcheck' check above" in m for m in messages)


def test_fast_skips_the_compile_check_unless_named():
    x = torch.randn(3, dtype=torch.float64)
    assert check_function(_Square.apply, x)["compile"].status == "skipped"
    assert check_function(_Square.apply, x, checks=["compile"])["compile"].status == "pass"
    with pytest.raises(TypeError, match="fast must be True or False"):
        check_function(_Square.apply, x, fast="no")


def test_a_function_that_returns_nothing_is_refused():
    with pytest.raises(ValueError, match=r"fn must return a floating-point tensor.*\(got None\)"):
        check_function(lambda x: None, torch.randn(3))


def test_mutation_and_non_contiguous_failures_name_the_fix():
    class InPlace(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.mul_(2)

        @staticmethod
        def backward(ctx, grad):
            return 2 * grad

    report = check_function(InPlace.apply, torch.randn(4, dtype=torch.float64), checks=["mutation"])
    assert report["mutation"].status == "fail" and "ctx.mark_dirty(x)" in report["mutation"].message

    class RawBuffer(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            # reads the underlying storage in order: wrong for a strided view
            flat = torch.as_strided(x, (x.numel(),), (1,))
            return flat.reshape(x.shape) * 1.0

        @staticmethod
        def backward(ctx, grad):
            return grad

    report = check_function(RawBuffer.apply, torch.randn(3, 4, dtype=torch.float64), checks=["non_contiguous"])
    assert report["non_contiguous"].status == "fail" and ".contiguous()" in report["non_contiguous"].message
