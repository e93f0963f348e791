"""grads, norms and clip_and_accumulate against a float64 Python loop over samples with ordinary autograd."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradwise.per_sample as ps
from gradwise.per_sample._rules import use_ghost


class Seq2Class(nn.Module):
    """Sequence model whose output is (B, C, T), as cross_entropy wants for sequence targets."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x):
        return self.body(x).transpose(1, 2)


class SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(6, 2, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h, _ = self.attn(x, x, x, need_weights=False)
        return self.head(h.mean(1))


class MaskedAttention(nn.Module):
    """Sequence-first attention with a key padding mask and the attention weights asked for."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(6, 3)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        pad = torch.zeros(x.shape[0], x.shape[1], dtype=torch.bool)
        pad[:, -1] = True
        seq_first = x.transpose(0, 1)
        h, w = self.attn(seq_first, seq_first, seq_first, key_padding_mask=pad)
        return self.head(h.transpose(0, 1).mean(1)) + w.mean(1)  # (B, 3) + (B, S=3)


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(8, 2, 12, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1], dtype=x.dtype)
        return self.head(self.layer(x, src_mask=mask, is_causal=True)).transpose(1, 2)


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 5, batch_first=True)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        h, _ = self.lstm(x)
        return self.head(h[:, -1])


class TiedLM(nn.Module):
    def __init__(self, vocab=7, dim=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, idx):
        return self.out(torch.tanh(self.mix(self.embed(idx)))).transpose(1, 2)


class BareParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([1.5, -0.5, 2.0]))
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(x) * self.scale


class Pool(nn.Module):
    def forward(self, x):
        return x.mean(1)


def _bn_eval():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    model[1].running_mean.uniform_(-0.5, 0.5)
    model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


def _cls(b):
    return torch.randint(0, 3, (b,))


# name -> (model factory, inputs, targets, loss)
CASES = {
    "linear-2d": (
        lambda: nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)),
        lambda: torch.randn(6, 5),
        lambda: _cls(6),
        F.cross_entropy,
    ),
    "linear-seq-ghost": (  # T=2: 2 * (6 + 10) <= 60, ghost form
        lambda: Seq2Class(nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3))),
        lambda: torch.randn(5, 2, 6),
        lambda: torch.randint(0, 3, (5, 2)),
        F.cross_entropy,
    ),
    "linear-seq-materialized": (  # T=9: 9 * (3 + 4) > 12
        lambda: Seq2Class(nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Linear(4, 3))),
        lambda: torch.randn(4, 9, 3),
        lambda: torch.randint(0, 3, (4, 9)),
        nn.CrossEntropyLoss(label_smoothing=0.1),
    ),
    "linear-no-bias-asked": (  # small bias-free layers: their output gradients are asked for by name
        lambda: nn.Sequential(
            nn.Linear(16, 16, bias=False), nn.ReLU(inplace=True), nn.Linear(16, 16, bias=False), nn.Linear(16, 3)
        ),
        lambda: torch.randn(2, 16),
        lambda: _cls(2),
        F.cross_entropy,
    ),
    "conv1d": (
        lambda: nn.Sequential(nn.Conv1d(2, 4, 3, stride=2, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(16, 3)),
        lambda: torch.randn(5, 2, 8),
        lambda: _cls(5),
        F.cross_entropy,
    ),
    "conv2d": (
        lambda: nn.Sequential(
            nn.Conv2d(4, 6, 3, stride=2, padding=2, groups=2, dilation=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(6, 2, 3, padding="same", padding_mode="reflect", bias=False),
            nn.Flatten(),
            nn.Linear(2 * 4 * 4, 3),
        ),
        lambda: torch.randn(4, 4, 8, 8),
        lambda: _cls(4),
        F.cross_entropy,
    ),
    "embedding": (
        lambda: nn.Sequential(nn.Embedding(5, 4, padding_idx=0), Pool(), nn.Linear(4, 3)),
        lambda: torch.tensor([[1, 1, 2, 0], [3, 3, 3, 3], [0, 4, 2, 4], [2, 1, 0, 0]]),
        lambda: _cls(4),
        F.cross_entropy,
    ),
    "norms": (
        lambda: nn.Sequential(
            nn.Conv1d(2, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.LayerNorm(24), nn.RMSNorm(24), nn.Linear(24, 3)
        ),
        lambda: torch.randn(5, 2, 8),
        lambda: _cls(5),
        F.cross_entropy,
    ),
    "multihead-attention": (SelfAttention, lambda: torch.randn(4, 3, 6), lambda: _cls(4), F.cross_entropy),
    "multihead-attention-masked": (MaskedAttention, lambda: torch.randn(4, 3, 6), lambda: _cls(4), F.cross_entropy),
    "transformer-encoder-causal": (
        Encoder,
        lambda: torch.randn(3, 4, 8),
        lambda: torch.randint(0, 3, (3, 4)),
        F.cross_entropy,
    ),
    "lstm": (Recurrent, lambda: torch.randn(4, 5, 3), lambda: _cls(4), nn.CrossEntropyLoss()),
    "batchnorm-eval": (_bn_eval, lambda: torch.randn(4, 2, 6, 6), lambda: _cls(4), F.cross_entropy),
    "tied-weights": (
        TiedLM,
        lambda: torch.tensor([[1, 2, 1], [3, 6, 6], [0, 0, 5]]),
        lambda: torch.tensor([[2, 1, -100], [6, 6, 0], [-100, -100, -100]]),  # the last sample is all ignored
        F.cross_entropy,
    ),
    "bare-parameter-mse": (
        BareParameter,
        lambda: torch.randn(5, 4),
        lambda: torch.randn(5, 3),
        functools.partial(F.mse_loss, reduction="sum"),
    ),
}


class _Only(nn.Module):
    """A model none of whose parameters has a rule: everything goes to the exact fallback."""

    def __init__(self, layer: nn.Module, classes: int = 3):
        super().__init__()
        self.layer, self.classes = layer, classes

    def forward(self, x):
        out = self.layer(x)
        out = out[0] if isinstance(out, tuple) else out
        return out.flatten(1)[:, : self.classes]


CASES.update(
    {
        "no-rule-conv3d": (
            lambda: _Only(nn.Conv3d(2, 3, 3)),
            lambda: torch.randn(4, 2, 5, 5, 5),
            lambda: _cls(4),
            F.cross_entropy,
        ),
        "no-rule-gru": (
            lambda: _Only(nn.GRU(4, 5, batch_first=True)),
            lambda: torch.randn(4, 6, 4),
            lambda: _cls(4),
            F.cross_entropy,
        ),
        "no-rule-conv-transpose": (
            lambda: _Only(nn.ConvTranspose2d(2, 3, 3)),
            lambda: torch.randn(4, 2, 5, 5),
            lambda: _cls(4),
            F.cross_entropy,
        ),
        "no-rule-bare-parameter": (
            lambda: _Bare(),
            lambda: torch.randn(4, 3),
            lambda: _cls(4),
            F.cross_entropy,
        ),
    }
)


class _Bare(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 3))

    def forward(self, x):
        return x @ self.w


def _reference(model, loss_fn, x, y):
    """float64 loop: each sample's own loss, ordinary autograd; an all-ignored sample has gradient 0."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [dict(model.named_parameters())[n] for n in names]
    out = {n: [] for n in names}
    for i in range(x.shape[0]):
        loss = loss_fn(model(x[i : i + 1]), y[i : i + 1])
        if torch.isnan(loss):
            gs = [torch.zeros_like(p) for p in params]
        else:
            gs = torch.autograd.grad(loss, params, allow_unused=True)
            gs = [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs, strict=True)]
        for n, g in zip(names, gs, strict=True):
            out[n].append(g)
    return {n: torch.stack(v) for n, v in out.items()}


def _case(name):
    make_model, make_x, make_y, loss_fn = CASES[name]
    torch.manual_seed(0)
    model = make_model().double()
    x = make_x()
    x = x.double() if x.is_floating_point() else x
    y = make_y()
    y = y.double() if y.is_floating_point() else y
    return model, x, y, loss_fn


@pytest.mark.parametrize("name", list(CASES))
def test_grads_norms_and_clipping_match_a_loop(name):
    model, x, y, loss_fn = _case(name)
    reference = _reference(model, loss_fn, x, y)
    got = ps.grads(model, loss_fn, x, y)
    assert list(got) == list(reference)
    failures = []
    for n in reference:
        if not torch.allclose(got[n], reference[n], rtol=1e-7, atol=1e-9):
            failures.append(f"{n}: max |diff| {(got[n] - reference[n]).abs().max():.3g}")
    assert not failures, "\n".join(failures)

    flat = torch.cat([g.flatten(1) for g in reference.values()], dim=1)
    expected_norms = flat.norm(dim=1)
    norms = ps.norms(model, loss_fn, x, y)
    torch.testing.assert_close(norms, expected_norms, rtol=1e-7, atol=1e-9)

    max_norm = float(expected_norms.median())
    clipped = copy.deepcopy(model)
    returned = ps.clip_and_accumulate(clipped, loss_fn, x, y, max_norm)
    torch.testing.assert_close(returned, expected_norms, rtol=1e-7, atol=1e-9)
    factors = (max_norm / (expected_norms + 1e-6)).clamp(max=1.0)
    for n, p in clipped.named_parameters():
        if n in reference:
            expected = (reference[n] * factors.reshape(-1, *[1] * (reference[n].dim() - 1))).sum(0)
            torch.testing.assert_close(p.grad, expected, rtol=1e-7, atol=1e-9)


def test_no_side_effects_on_the_model():
    model, x, y, loss_fn = _case("conv2d")
    hooks = [(m._forward_hooks.copy(), m._forward_pre_hooks.copy()) for m in model.modules()]
    ps.norms(model, loss_fn, x, y)
    assert all(p.grad is None for p in model.parameters())
    assert [(m._forward_hooks, m._forward_pre_hooks) for m in model.modules()] == hooks


def test_attention_forward_is_restored():
    model, x, y, loss_fn = _case("transformer-encoder-causal")
    ps.norms(model, loss_fn, x, y)
    assert "forward" not in model.layer.self_attn.__dict__
    assert not model.layer.self_attn._forward_hooks and not model.layer.self_attn._forward_pre_hooks


def test_hooks_are_removed_when_the_model_raises():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            self.lin(x)
            raise RuntimeError("user bug")

    model = Broken()
    with pytest.raises(RuntimeError, match="user bug"):
        ps.norms(model, F.cross_entropy, torch.randn(2, 3), torch.tensor([0, 1]))
    assert not model.lin._forward_hooks and not model.lin._forward_pre_hooks
    assert not torch.overrides._get_current_function_mode_stack()


def test_loss_module_is_not_mutated():
    loss = nn.CrossEntropyLoss()
    model, x, y, _ = _case("linear-2d")
    ps.norms(model, loss, x, y)
    assert loss.reduction == "mean"


def test_ghost_choice_by_cost():
    assert use_ghost(2, 6, 10) and not use_ghost(9, 3, 4)
    assert use_ghost(128, 1024, 1024) and not use_ghost(1024, 64, 64)


def test_ignored_sample_and_mean_reduction_are_documented_semantics():
    # a mean-reduced loss is not divided by the batch: the mean of per-sample grads is the batch gradient
    model, x, y, loss_fn = _case("linear-2d")
    g = ps.grads(model, loss_fn, x, y)
    batch = torch.autograd.grad(loss_fn(model(x), y), model[0].weight)[0]
    torch.testing.assert_close(g["0.weight"].mean(0), batch)


def test_chunk_size_and_params_subset():
    model, x, y, loss_fn = _case("linear-2d")
    full = ps.grads(model, loss_fn, x, y)
    part = ps.grads(model, loss_fn, x, y, params=["2.bias"], chunk_size=4)
    assert list(part) == ["2.bias"]
    torch.testing.assert_close(part["2.bias"], full["2.bias"])


def test_float32_matches_float64():
    model, x, y, loss_fn = _case("conv2d")
    n64 = ps.norms(model, loss_fn, x, y)
    n32 = ps.norms(model.float(), loss_fn, x.float(), y)
    assert n32.dtype == torch.float32
    torch.testing.assert_close(n32.double(), n64, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "name",
    ["linear-2d", "linear-seq-ghost", "conv2d", "embedding", "norms", "multihead-attention",
     "multihead-attention-masked", "transformer-encoder-causal", "batchnorm-eval", "tied-weights"],
)  # fmt: skip
def test_norms_use_the_layer_rules_without_the_exact_fallback(name, monkeypatch):
    from gradwise.per_sample import _api

    def refuse(*args, **kwargs):
        raise AssertionError("the exact fallback was used")

    model, x, y, loss_fn = _case(name)
    expected = ps.norms(model, loss_fn, x, y)
    monkeypatch.setattr(_api, "_vmap_grads", refuse)
    torch.testing.assert_close(ps.norms(model, loss_fn, x, y), expected)


@pytest.mark.parametrize("name", ["lstm", "bare-parameter-mse"])
def test_layers_without_a_rule_use_the_exact_fallback(name, monkeypatch):
    from gradwise.per_sample import _api

    calls = []
    original = _api._vmap_grads
    monkeypatch.setattr(_api, "_vmap_grads", lambda *a, **k: calls.append(a[5]) or original(*a, **k))
    model, x, y, loss_fn = _case(name)
    ps.norms(model, loss_fn, x, y)
    expected = {"lstm": ["lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.bias_ih_l0", "lstm.bias_hh_l0"]}
    assert calls == [expected.get(name, ["scale"])]


def test_frozen_parameters_are_left_out():
    model, x, y, loss_fn = _case("conv2d")
    model[0].weight.requires_grad_(False)
    model[4].bias.requires_grad_(False)
    reference = _reference(model, loss_fn, x, y)
    assert "0.weight" not in reference and "4.bias" not in reference
    got = ps.grads(model, loss_fn, x, y)
    assert list(got) == list(reference)
    expected = torch.cat([g.flatten(1) for g in reference.values()], dim=1).norm(dim=1)
    torch.testing.assert_close(ps.norms(model, loss_fn, x, y), expected, rtol=1e-7, atol=1e-9)


def test_dropout_in_training_mode_gives_each_sample_its_own_mask():
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3)).double()
    x, y = torch.randn(6, 4, dtype=torch.float64), _cls(6)
    got = ps.grads(model, F.cross_entropy, x, y)
    assert got["0.weight"].shape == (6, 8, 4) and torch.isfinite(got["0.weight"]).all()
    assert ps.norms(model, F.cross_entropy, x, y).shape == (6,)


def test_both_routes_to_the_output_gradient_are_exercised():
    from gradwise.per_sample._capture import Capture

    model, x, _, _ = _case("linear-no-bias-asked")
    with Capture(model, {id(p) for p in model.parameters()}) as capture:
        model(x)
    assert [r.route for r in capture.records] == ["out", "out", "node"]
    assert capture.records[0].out._version != capture.records[0].version  # then rerouted: modified in place
