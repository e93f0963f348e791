"""batch-mixing: a model whose forward makes sample i's output depend on sample j's input.

Each finding is compared with an independent reference: the Jacobian of the model's output
with respect to its input (``torch.autograd.functional.jacobian``, reverse mode, on a copy of
the model as the probe saw it) says which output samples depend on which input samples. The
clean look-alikes show that the probe ran and found nothing to report; the last tests show
that the model, its BatchNorm statistics, the gradients and the RNG states are left exactly
as a plain run leaves them.
"""

import copy
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gradwise as gw
from gradwise.doctor._mixing import probe
from tests.doctor.instrumentation import global_state
from tests.doctor.source import line_of


def mixing(dr):
    hits = [f for f in dr.findings if f.kind == "batch-mixing"]
    assert len(hits) <= 1, hits
    assert dr.internal_errors == []
    return hits[0] if hits else None


def dependence(model: nn.Module, x: torch.Tensor, out_axis: int = 0) -> torch.Tensor:
    """The reference: ``dep[i, j]`` is whether output sample i (along ``out_axis``) depends on
    input sample j (along dim 0), from the full Jacobian in float64."""
    model = copy.deepcopy(model).double()
    jac = torch.autograd.functional.jacobian(lambda t: model(t), x.double())
    out_ndim = jac.dim() - x.dim()
    jac = jac.movedim(out_axis, 0)
    rows = jac.shape[0]
    per_input = jac.reshape(rows, -1, *x.shape).movedim(2, 1).reshape(rows, x.shape[0], -1)
    assert out_ndim >= 1
    return (per_input != 0).any(-1)


def reached(dep: torch.Tensor, sample: int) -> int:
    """How many other output samples input sample ``sample`` reaches."""
    column = dep[:, sample].clone()
    column[sample] = False
    return int(column.sum())


def train(model, batches, loss_fn, steps=3):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gw.doctor.watch(steps=steps) as dr:
        for xb, yb in batches:
            loss = loss_fn(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return dr


def probe_record(dr, model):
    return dr.check("batch-mixing")._models[model]


# --- the mistakes -------------------------------------------------------------------------------


class HeadsMLP(nn.Module):
    """An MLP that splits its hidden layer into heads with a view where a permute was meant."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(12, 4 * 6)
        self.out = nn.Linear(6, 1)

    def forward(self, x):
        h = torch.tanh(self.body(x))
        heads = h.view(4, x.shape[0], 6)  # heads-view
        return self.out(heads).mean(0)


def test_view_instead_of_permute_in_an_mlp_is_found_at_the_view():
    torch.manual_seed(0)
    model, x, y = HeadsMLP(), torch.randn(16, 12), torch.randn(16, 1)
    before = copy.deepcopy(model)
    dr = train(model, [(x, y)] * 3, F.mse_loss)
    f = mixing(dr)
    assert f is not None and f.severity == "error" and f.line == line_of("heads-view")
    dep = dependence(before, x)  # the reference
    assert f.data["reached"] == reached(dep, f.data["sample"]) > 0
    assert f.data["op"] == "view" and f.data["op_input_shape"] == [16, 24] and f.data["op_output_shape"] == [4, 16, 6]
    assert f.message.startswith("view(4, 16, 6) on a tensor of shape (16, 24)") and "permute" in f.fix


class CRNN(nn.Module):
    """Conv features of a text-line image read as a sequence by a sequence-first LSTM."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.rnn = nn.LSTM(4 * 4, 8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        f = self.conv(x)
        b, c, h, w = f.shape
        seq = f.view(w, b, c * h)  # crnn-view
        out, _ = self.rnn(seq)
        return self.fc(out.mean(0))


class PermutedCRNN(CRNN):
    def forward(self, x):
        seq = self.conv(x).permute(3, 0, 1, 2).flatten(2)  # (W, B, C * H)
        out, _ = self.rnn(seq)
        return self.fc(out.mean(0))


def test_view_instead_of_permute_in_a_cnn_is_found_with_the_target_as_evidence():
    torch.manual_seed(0)
    model, x, y = CRNN(), torch.randn(6, 1, 8, 20), torch.randint(0, 5, (6,))
    before = copy.deepcopy(model)
    dr = train(model, [(x, y)] * 3, F.cross_entropy)
    f = mixing(dr)
    assert f is not None and f.line == line_of("crnn-view")
    assert f.data["reached"] == reached(dependence(before, x), f.data["sample"]) > 0
    assert f.data["evidence"] == [
        "the loss target, of shape (6), has one row per element of the input's dim 0",
        "the model's forward names the input's dim 0 'b'",  # b, c, h, w = f.shape
    ]
    model = PermutedCRNN()  # the same network with the permute: clean
    assert not dependence(model, x).fill_diagonal_(False).any()
    dr = train(model, [(x, y)] * 3, F.cross_entropy)
    assert mixing(dr) is None


class SoftmaxClassifier(nn.Module):
    def __init__(self, last):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
        self.last = last

    def forward(self, x):
        return self.last(self.net(x))  # last-layer


def _log_softmax(s):
    return F.log_softmax(s, dim=0)  # log-softmax


def _normalize(s):
    return F.normalize(s, dim=0)  # normalize


def _hand_normalise(s):
    e = s.exp()
    return e / e.sum(dim=0, keepdim=True)  # hand-sum


@pytest.mark.parametrize(
    ("last", "op", "marker", "fix"),
    [
        (_log_softmax, "log_softmax", "log-softmax", "log_softmax(x, dim=-1)"),
        (nn.Softmax(dim=0), "softmax", "last-layer", "softmax(x, dim=-1)"),  # the line that calls the layer
        (_normalize, "normalize", "normalize", "F.normalize(z, dim=1)"),
        (_hand_normalise, "sum", "hand-sum", "x.sum(dim=-1, keepdim=True)"),
    ],
    ids=["log_softmax", "nn.Softmax", "normalize", "hand-written"],
)
def test_softmax_or_a_normalisation_over_dim_0(last, op, marker, fix):
    torch.manual_seed(0)
    model, x, y = SoftmaxClassifier(last), torch.randn(10, 6), torch.randn(10, 4)
    dep = dependence(model, x)
    dr = train(model, [(x, y)] * 3, F.mse_loss)
    f = mixing(dr)
    assert f is not None and f.data["op"] == op and fix in f.fix
    assert f.line == line_of(marker)
    assert f.data["reached"] == reached(dep, f.data["sample"]) == 9
    assert f.data["dim"] == 0


class SequenceClassifier(nn.Module):
    def __init__(self, batch_first=False):
        super().__init__()
        self.rnn = nn.LSTM(5, 8, batch_first=batch_first)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        out, _ = self.rnn(x)  # lstm-call
        return self.fc(out[:, -1])


def test_a_sequence_first_lstm_given_batch_first_dataloader_batches():
    torch.manual_seed(0)
    data, labels = torch.randn(24, 7, 5), torch.randint(0, 3, (24,))
    loader = DataLoader(TensorDataset(data, labels), batch_size=8)
    model = SequenceClassifier()
    before = copy.deepcopy(model)
    dr = train(model, loader, lambda out, y: F.cross_entropy(out, y))
    f = mixing(dr)
    assert f is not None and f.line == line_of("lstm-call") and f.data["subkind"] == "sequence"
    first = next(iter(loader))[0]
    dep = dependence(before, first)  # output sample i depends on samples 0..i: an LSTM along the batch
    assert f.data["reached"] == reached(dep, f.data["sample"]) == 8 - 1 - f.data["sample"]
    assert "the input is a DataLoader batch" in f.data["evidence"]
    assert "batch_first=False" in f.message and "batch_first=True" in f.fix and "transpose(0, 1)" in f.fix
    # batch_first=True: the same data, clean
    model = SequenceClassifier(batch_first=True)
    assert not dependence(model, first).fill_diagonal_(False).any()
    assert mixing(train(model, loader, F.cross_entropy)) is None


class TimeMajorClassifier(nn.Module):
    """A sequence-first GRU with attention pooling over time (a softmax over dim 0, the time)."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(5, 8)
        self.score = nn.Linear(8, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        out, _ = self.rnn(x)  # time-major-gru
        weights = torch.softmax(self.score(out), dim=0)
        return self.fc((weights * out).sum(0))


class BatchMajor(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.transpose(0, 1))


def test_a_legit_sequence_first_model_on_time_major_data_is_not_reported():
    torch.manual_seed(0)
    model = TimeMajorClassifier()
    x, y = torch.randn(12, 6, 5), torch.randint(0, 3, (6,))  # (T, B, D): dim 1 holds the samples
    batch_major = BatchMajor(model)  # the reference, with the samples along dim 0
    assert not dependence(batch_major, x.transpose(0, 1)).fill_diagonal_(False).any()
    dr = train(model, [(x, y)] * 3, F.cross_entropy)
    assert mixing(dr) is None
    rec = probe_record(dr, model)
    assert rec.result is not None and rec.result.ops > 0  # it was probed along dim 0, the time
    assert rec.counter  # the target has one row per element of dim 1
    # the same model fed batch-first data (B, T, D) with one label per sample: found
    x, y = torch.randn(6, 12, 5), torch.randint(0, 3, (6,))
    model = SequenceClassifier()
    dr = train(model, [(x, y)] * 3, F.cross_entropy)
    f = mixing(dr)
    assert f is not None and f.line == line_of("lstm-call")
    assert f.data["evidence"] == ["the loss target, of shape (6), has one row per element of the input's dim 0"]


class TokenAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.attn = nn.MultiheadAttention(8, 2)
        self.fc = nn.Linear(8, 2)

    def forward(self, tokens):
        e = self.embed(tokens)
        a, _ = self.attn(e, e, e)  # token-attention
        return self.fc(a.mean(1))


class AttentionTail(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.attn, self.fc = model.attn, model.fc

    def forward(self, e):
        return self.fc(self.attn(e, e, e)[0].mean(1))


def test_token_ids_into_a_sequence_first_attention():
    torch.manual_seed(0)
    model, tokens, y = TokenAttention(), torch.randint(0, 20, (8, 5)), torch.randint(0, 2, (8,))
    dr = train(model, [(tokens, y)] * 3, F.cross_entropy)
    f = mixing(dr)
    assert f is not None and f.line == line_of("token-attention") and f.data["module"] == "MultiheadAttention"
    # the reference, from the embedding's output on: every output sample depends on every input sample
    e = model.embed(tokens).detach()
    assert f.data["reached"] == reached(dependence(AttentionTail(model), e), f.data["sample"]) == 7


# --- the look-alikes --------------------------------------------------------------------------


class BatchNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)


def test_batchnorm_in_train_mode_is_not_reported():
    torch.manual_seed(0)
    model, x, y = BatchNormNet(), torch.randn(10, 6), torch.randint(0, 3, (10,))
    reference = copy.deepcopy(model).eval()
    assert dependence(model.train(), x).fill_diagonal_(False).any()  # train mode mixes, on purpose
    assert not dependence(reference, x).fill_diagonal_(False).any()  # the running statistics do not
    dr = train(model, [(x, y)] * 3, F.cross_entropy)
    assert mixing(dr) is None
    rec = probe_record(dr, model)
    assert rec.result is not None and not rec.result.mixed


class CausalLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(30, 16)
        self.pos = nn.Parameter(torch.zeros(1, 8, 16))
        layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 30)

    def forward(self, tokens):
        h = self.embed(tokens) + self.pos[:, : tokens.shape[1]]
        mask = nn.Transformer.generate_square_subsequent_mask(tokens.shape[1])
        return self.head(self.encoder(h, mask=mask, is_causal=True))


class PermutedLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(5, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        _, (h, _) = self.rnn(x.transpose(0, 1))
        return self.fc(h[-1])


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8))

    def forward(self, x):
        return self.net(x)


def nt_xent(z, _):
    z = F.normalize(z, dim=1)
    sim = z @ z.T / 0.5
    n = z.shape[0] // 2
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    return F.cross_entropy(sim, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]))


def decorrelation(z, _):
    centred = z - z.mean(0, keepdim=True)  # a batch mean, in the loss
    cov = centred.T @ centred / (z.shape[0] - 1)
    return (cov - torch.eye(z.shape[1])).pow(2).sum()


def _lookalikes():
    torch.manual_seed(0)
    tokens = torch.randint(0, 30, (6, 9))
    seqs, labels = torch.randn(16, 7, 5), torch.randint(0, 3, (16,))
    x = torch.randn(8, 6)
    views = torch.cat([x + 0.1 * torch.randn_like(x), x + 0.1 * torch.randn_like(x)])
    lm_loss = lambda logits, t: F.cross_entropy(logits.reshape(-1, 30), t.reshape(-1))  # noqa: E731
    return {
        "transformer_batch_first": (CausalLM(), [(tokens[:, :-1], tokens[:, 1:])] * 3, lm_loss, None),
        "permute_before_seq_first_lstm": (
            PermutedLSTM(),
            DataLoader(TensorDataset(seqs, labels), batch_size=8),
            F.cross_entropy,
            seqs[:8],
        ),
        "contrastive_similarity_in_the_loss": (Encoder(), [(views, None)] * 3, nt_xent, views),
        "batch_mean_in_the_loss": (Encoder(), [(x, None)] * 3, decorrelation, x),
    }


@pytest.mark.parametrize("case", list(_lookalikes()))
def test_clean_lookalikes_are_probed_and_not_reported(case):
    model, batches, loss_fn, first = _lookalikes()[case]
    if first is not None:  # the reference: each output sample depends on its own input only
        assert not dependence(model, first).fill_diagonal_(False).any()
    dr = train(model, batches, loss_fn)
    assert mixing(dr) is None
    rec = probe_record(dr, model)
    assert rec.result is not None and rec.result.ops > 0 and not rec.result.culprits


class SimilarityModel(nn.Module):
    """Returns the (B, B) cosine similarities of its embeddings: pairs of samples, on purpose."""

    def __init__(self):
        super().__init__()
        self.encoder = Encoder()

    def forward(self, x):
        z = F.normalize(self.encoder(x), dim=-1)
        return z @ z.T / 0.1


class MinibatchStd(nn.Module):
    """A discriminator that appends the batch's standard deviation as a feature (ProGAN)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Linear(6, 16)
        self.out = nn.Linear(17, 1)

    def forward(self, x):
        h = F.leaky_relu(self.features(x), 0.2)
        spread = h.std(0).mean().expand(h.shape[0], 1)
        return self.out(torch.cat([h, spread], 1))


@pytest.mark.parametrize("model_class", [SimilarityModel, MinibatchStd])
def test_mixing_on_purpose_in_the_model_is_not_reported(model_class):
    torch.manual_seed(0)
    model, x = model_class(), torch.randn(8, 6)
    assert dependence(model, x).fill_diagonal_(False).any()  # the reference: the samples do interact
    target = torch.arange(8) if model_class is SimilarityModel else torch.ones(8, 1)
    loss_fn = F.cross_entropy if model_class is SimilarityModel else F.binary_cross_entropy_with_logits
    dr = train(model, [(x, target)] * 3, loss_fn)
    assert mixing(dr) is None
    result = probe_record(dr, model).result
    assert result is not None and not result.culprits


class Unscrambled(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        b, t, d = x.shape
        h = self.fc(x.view(t, b, d))
        return h.view(b, t, d).sum(1)  # the view undone: per sample again


def test_a_mix_undone_later_is_not_reported():
    torch.manual_seed(0)
    model, x = Unscrambled(), torch.randn(6, 9, 4)
    assert not dependence(model, x).fill_diagonal_(False).any()
    dr = train(model, [(x, torch.randn(6, 4))] * 3, F.mse_loss)
    assert mixing(dr) is None and probe_record(dr, model).result.ops > 0


def test_a_layer_in_a_sequential_is_named_where_it_was_made(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(
        "import torch\n"
        "import torch.nn.functional as F\n"
        "from torch import nn\n"
        "torch.manual_seed(0)\n"
        "model = nn.Sequential(\n"
        "    nn.Linear(8, 16),\n"
        "    nn.Softmax(dim=0),\n"
        ")\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "x, y = torch.randn(32, 8), torch.randint(0, 16, (32,))\n"
        "for _ in range(3):\n"
        "    loss = F.nll_loss(torch.log(model(x)), y)\n"
        "    opt.zero_grad()\n"
        "    loss.backward()\n"
        "    opt.step()\n"
    )
    from gradwise._runner import run_script

    dr, run = run_script(str(script), [], lambda: gw.doctor.watch(steps=3))
    assert run.failure is None
    f = mixing(dr)
    assert f is not None and f.line == 7 and f.data["module"] == "Softmax"  # nn.Softmax(dim=0), not model(x)


# --- the probe against the Jacobian, op by op ----------------------------------------------------------


class Op(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.fn = fn

    def forward(self, x):
        return self.fn(x * self.scale)


OPS = {
    "transpose-reshape": lambda x: (
        x.transpose(0, 1).reshape(x.shape[1], -1).tanh().view(x.shape[1], x.shape[0], -1).transpose(0, 1)
    ),
    "flatten-unflatten": lambda x: x.flatten(0, 1).tanh().unflatten(0, (x.shape[0], x.shape[1])),
    "view-scramble": lambda x: x.reshape(x.shape[1], x.shape[0], -1).cumsum(0).reshape(x.shape),
    "softmax-dim1": lambda x: x.softmax(1),
    "softmax-dim0": lambda x: x.softmax(0),
    "cumsum-dim0": lambda x: x.cumsum(0),
    "conv1d": lambda x: F.conv1d(x, torch.ones(3, x.shape[1], 2, dtype=x.dtype)),
    "cat-flip": lambda x: torch.cat([x, x.flip(0)], 0)[: x.shape[0]] * 2,
    "batch-mean": lambda x: x - x.mean(0),
    "roll-batch": lambda x: x + x.roll(1, 0),
    "layer-norm": lambda x: F.layer_norm(x, x.shape[1:]),
    # no forward-mode formula: a central difference instead
    "cdist-to-fixed-points": lambda x: torch.cdist(x, torch.ones(1, 3, x.shape[2], dtype=x.dtype)),
    "cdist-then-softmax-dim0": lambda x: torch.cdist(x, torch.ones(1, 3, x.shape[2], dtype=x.dtype)).softmax(0),
}


@pytest.mark.parametrize("name", list(OPS))
def test_the_probe_agrees_with_the_jacobian(name):
    torch.manual_seed(0)
    model, x = Op(OPS[name]), torch.randn(6, 4, 5)
    result = probe(model, (x,), {}, ("arg", 0))
    dep = dependence(model, x)
    assert result.mixed == bool(dep.clone().fill_diagonal_(False).any())
    if result.mixed:
        assert result.reached == reached(dep, result.sample)


# --- giving up, quietly ---------------------------------------------------------------------------


class RoundThrough(torch.autograd.Function):
    """A straight-through rounding without a forward-mode derivative (no ``jvp``)."""

    @staticmethod
    def forward(ctx, x):
        return x.round()

    @staticmethod
    def backward(ctx, grad):
        return grad


class Quantised(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 8)

    def forward(self, x):
        return RoundThrough.apply(self.fc(x)).softmax(0)


class Hooked(SoftmaxClassifier):
    def __init__(self):
        super().__init__(lambda s: s.softmax(0))
        self.seen = []
        self.net.register_forward_hook(lambda m, i, o: self.seen.append(o.shape))


def test_models_that_cannot_be_probed_are_left_alone():
    torch.manual_seed(0)
    x, y = torch.randn(8, 4), torch.randn(8, 8)
    model = Quantised()
    dr = train(model, [(x, y)] * 3, F.mse_loss)
    assert mixing(dr) is None and "jvp" in probe_record(dr, model).skipped  # no fault either (mixing())
    hooked = Hooked()
    dr = train(hooked, [(torch.randn(8, 6), torch.randn(8, 4))] * 3, F.mse_loss)
    assert mixing(dr) is None and probe_record(dr, hooked).skipped == "hooks on its modules"
    assert len(hooked.seen) == 3  # the user's hook saw the three real forwards only
    no_stats = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8, track_running_stats=False), nn.Linear(8, 8))
    dr = train(no_stats, [(x, y)] * 3, F.mse_loss)
    assert mixing(dr) is None and "BatchNorm" in probe_record(dr, no_stats).skipped


class Masked(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x, *, mask, dim):
        return torch.softmax(self.fc(x).masked_fill(mask, -1e4), dim=dim)  # keyword-softmax


def test_keyword_arguments_of_the_call_reach_the_probe():
    torch.manual_seed(0)
    model, x = Masked(), torch.randn(8, 4)
    mask = torch.zeros(8, 3, dtype=torch.bool)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.doctor.watch(steps=3) as dr:
        for _ in range(3):
            loss = F.mse_loss(model(x, mask=mask, dim=0), torch.full((8, 3), 0.1))
            opt.zero_grad()
            loss.backward()
            opt.step()
    f = mixing(dr)
    assert f is not None and f.line == line_of("keyword-softmax")


# --- nothing changes -------------------------------------------------------------------------------------


class Stateful(nn.Module):
    """BatchNorm, Dropout, a stacked LSTM with dropout, attention with dropout, a buffer the
    forward updates, an attribute it counts, one it caches and a list it appends to, and
    Python's RNG."""

    def __init__(self):
        super().__init__()
        self.register_buffer("ema", torch.zeros(6))
        self.calls = 0
        self.maps = []
        self.inp = nn.Linear(6, 8)
        self.bn = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.3)
        self.rnn = nn.LSTM(8, 8, num_layers=2, dropout=0.2, batch_first=True)
        self.attn = nn.MultiheadAttention(8, 2, dropout=0.1, batch_first=True)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        self.calls += 1
        if self.training:
            self.ema.mul_(0.9).add_(0.1 * x.detach().mean(0))
        self.last_input = x
        h = self.drop(F.relu(self.bn(self.inp(x - self.ema))))
        seq = h.unsqueeze(1).expand(-1, 4, -1) + 0.1 * torch.randn(x.shape[0], 4, 8)
        out, _ = self.rnn(seq)
        a, weights = self.attn(out, out, out)
        self.maps.append(weights.detach())
        return self.out(a.mean(1)) + random.random()


def _run(watch: bool):
    torch.manual_seed(0)
    random.seed(0)
    model = Stateful()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
    losses, flags = [], []
    context = gw.doctor.watch(steps=3) if watch else None
    dr = context.__enter__() if context is not None else None
    for _ in range(3):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        flags.append([m.training for m in model.modules()])
        opt.step()
        losses.append(loss.detach())
    if context is not None:
        context.__exit__(None, None, None)
    return model, losses, flags, torch.get_rng_state(), random.random(), dr


def test_the_model_its_statistics_the_gradients_and_the_rng_are_untouched():
    plain = _run(False)  # first: torch's own lazy imports (sympy adds a warning filter) happen here
    before = global_state()
    watched = _run(True)
    assert global_state() == before
    (m0, l0, f0, rng0, py0, _), (m1, l1, f1, rng1, py1, dr) = plain, watched
    rec = probe_record(dr, m1)
    assert rec.result is not None and rec.result.ops > 10 and mixing(dr) is None  # it was probed
    assert all(torch.equal(a, b) for a, b in zip(l0, l1, strict=True))
    s0, s1 = m0.state_dict(), m1.state_dict()
    assert s0.keys() == s1.keys() and all(torch.equal(s0[k], s1[k]) for k in s0)  # running stats, counts, ema
    assert int(s1["bn.num_batches_tracked"]) == 3
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(m0.parameters(), m1.parameters(), strict=True))
    assert torch.equal(rng0, rng1) and py0 == py1 and f0 == f1
    assert m0.calls == m1.calls == 3 and len(m1.maps) == 3 and m1.last_input is not None
    assert all(torch.equal(a, b) for a, b in zip(m0.maps, m1.maps, strict=True))
    assert torch.is_grad_enabled() and torch._C._get_mkldnn_enabled() == m0.training is True


class NamedBatchTagger(nn.Module):
    """A sequence-first encoder whose forward says dim 0 is the batch (``b, t = tokens.shape``)
    and then views instead of transposing; no DataLoader, no target evidence needed."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.rnn = nn.GRU(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, tokens):
        b, t = tokens.shape
        x = self.embed(tokens).view(t, b, 8)  # named-view
        h, _ = self.rnn(x)
        return self.out(h.reshape(b, t, 8))


def test_a_forward_that_names_dim_0_the_batch_is_evidence_for_a_sequence_first_model():
    torch.manual_seed(0)
    model = NamedBatchTagger()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.doctor.watch(steps=2) as dr:
        for _ in range(2):
            tokens = torch.randint(0, 20, (4, 6))
            loss = model(tokens).pow(2).mean()  # no target to align with
            opt.zero_grad()
            loss.backward()
            opt.step()
    f = mixing(dr)
    assert f is not None and f.line == line_of("named-view")
    assert "the model's forward names the input's dim 0 'b'" in f.data["evidence"]
