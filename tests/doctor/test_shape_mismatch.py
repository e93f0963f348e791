"""shape-mismatch: a crash on a shape error is explained at the innermost user line, with
each operand's shape and where it came from, the figures compared against shapes worked out
by hand and against the exception PyTorch raises without the doctor (which must reach the
user unchanged); errors the code catches, and errors that are not about shapes, give no
finding; the CLI reports it with the crash; nothing is left behind."""

import gc
import json
import textwrap
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradwise as gw
from gradwise import cli
from gradwise.doctor._shapes import is_shape_error
from tests.doctor.instrumentation import global_state
from tests.doctor.source import line_of


def plain_error(fn) -> BaseException:
    """The exception ``fn`` raises without the doctor: the reference."""
    with pytest.raises(Exception) as info:
        fn()
    return info.value


def watched(fn):
    """``fn`` under the doctor: the exception that reached the caller, and the doctor."""
    dr = None
    with pytest.raises(Exception) as info:
        with gw.doctor.watch() as dr:
            fn()
    return info.value, dr


def only_finding(dr):
    hits = [f for f in dr.findings if f.kind == "shape-mismatch"]
    assert len(hits) == 1, dr.report()
    assert dr.internal_errors == []
    return hits[0]


def assert_same_error(plain, seen):
    assert type(seen) is type(plain) and str(seen) == str(plain)


def innermost_line(exc) -> int:
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == __file__:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


class LeNet(nn.Module):
    def __init__(self, in_features=500):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)  # conv2-made
        self.fc1 = nn.Linear(in_features, 50)  # fc1-made

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))  # pooled
        x = x.view(-1, 500)  # view-line
        return self.fc1(x)


def test_view_of_a_conv_output_names_the_features_per_sample_and_the_layer_to_change():
    torch.manual_seed(0)
    model, x = LeNet(), torch.randn(8, 1, 28, 28)
    plain = plain_error(lambda: model(x))
    seen, dr = watched(lambda: model(x).sum().backward())
    assert_same_error(plain, seen)
    assert innermost_line(seen) == line_of("view-line")
    f = only_finding(dr)
    assert f.severity == "error" and f.file == __file__ and f.line == line_of("view-line") and f.step == 1
    # by hand: 28 -5+1 = 24, /2 = 12, -5+1 = 8, /2 = 4: (8, 20, 4, 4), 20*4*4 = 320 per sample
    assert f.data["op"] == "view" and f.data["shapes"] == {"x": [8, 20, 4, 4]}
    assert (f.data["expected"], f.data["actual"], f.data["numel"]) == (500, 320, 8 * 320)
    assert "x.view(-1, 500)" in f.message and "20*4*4 = 320 features per sample, the view asks for 500" in f.message
    assert f"conv2 (nn.Conv2d(10, 20, kernel_size=5), line {line_of('conv2-made')})" in f.message
    assert f"max_pool2d at line {line_of('pooled')}" in f.message
    assert "x.flatten(1)" in f.fix and f"fc1 = nn.Linear(320, 50) (line {line_of('fc1-made')})" in f.fix


def test_linear_in_features_mismatch_is_reported_at_the_layer_call_in_forward():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 20, 5)
            self.fc = nn.Linear(500, 50)  # fc-made

        def forward(self, x):
            x = torch.flatten(F.max_pool2d(self.conv(x), 2), 1)
            return self.fc(x)  # fc-call

    torch.manual_seed(0)
    model, x = Net(), torch.randn(4, 1, 12, 12)
    plain = plain_error(lambda: model(x))
    seen, dr = watched(lambda: model(x))
    assert_same_error(plain, seen)
    f = only_finding(dr)
    assert f.line == line_of("fc-call") == innermost_line(seen)
    features = 20 * ((12 - 5 + 1) // 2) ** 2  # 20 x 4 x 4
    assert f.data["shapes"] == {"x": [4, features]} and (f.data["expected"], f.data["actual"]) == (500, features)
    assert f.data["layer"] == "fc" and set(f.parameters) == {"fc.weight", "fc.bias"}
    assert f"self.fc(x) at line {f.line}: x is (4, {features})" in f.message
    assert f"fc = nn.Linear(500, 50) expects 500 input features (made at line {line_of('fc-made')})" in f.message
    assert f"nn.Linear({features}, 50)" in f.fix


def test_a_linear_inside_a_sequential_is_named_by_its_index():
    model = nn.Sequential(nn.Flatten(), nn.Linear(30, 4))
    x = torch.randn(2, 5, 7)
    seen, dr = watched(lambda: model(x))  # sequential-call
    assert_same_error(plain_error(lambda: model(x)), seen)
    f = only_finding(dr)
    assert f.line == line_of("sequential-call")
    assert f.data["layer"] == "model[1]" and f.data["expected"] == 30 and f.data["actual"] == 35
    assert "model[1]'s input is (2, 35), made by model[0] (nn.Flatten(" in f.message


def test_matmul_names_both_shapes_and_the_contracted_dimensions():
    w = torch.randn(20, 5, requires_grad=True)
    x = torch.randn(16, 10)

    def step():
        h = x @ w  # matmul-line
        h.sum().backward()

    seen, dr = watched(step)
    assert_same_error(plain_error(step), seen)
    f = only_finding(dr)
    assert f.line == line_of("matmul-line")
    assert f.data["shapes"] == {"x": [16, 10], "w": [20, 5]}
    assert (f.data["expected"], f.data["actual"]) == (x.shape[-1], w.shape[-2])
    assert "x @ w" in f.message and "x's last dimension (10) with w's dim -2 (20)" in f.message


def test_batched_matmul_suggests_the_transpose_that_fits():
    q, k = torch.randn(4, 10, 16), torch.randn(4, 10, 16)
    seen, dr = watched(lambda: torch.bmm(q, k))  # bmm-line
    assert_same_error(plain_error(lambda: torch.bmm(q, k)), seen)
    f = only_finding(dr)
    assert f.line == line_of("bmm-line") and (f.data["expected"], f.data["actual"]) == (16, 10)
    assert "k.transpose(-2, -1)" in f.fix
    torch.bmm(q, k.transpose(-2, -1))  # the fix is right: it runs


def test_cat_lists_each_tensors_sizes_outside_the_joined_dim():
    class Fuse(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(100, 16)  # embed-made
            self.numeric = nn.Linear(6, 8)

        def forward(self, tokens, numbers):
            text = self.embed(tokens).mean(0)  # mean-line
            extra = self.numeric(numbers)
            return torch.cat([text, extra], dim=1)  # cat-line

    torch.manual_seed(0)
    model, tokens, numbers = Fuse(), torch.randint(0, 100, (8, 12)), torch.randn(8, 6)
    seen, dr = watched(lambda: model(tokens, numbers))
    assert_same_error(plain_error(lambda: model(tokens, numbers)), seen)
    f = only_finding(dr)
    assert f.line == line_of("cat-line")
    # by hand: embed gives (8, 12, 16), its mean over dim 0 (12, 16); extra is (8, 8)
    assert f.data["shapes"] == {"text": [12, 16], "extra": [8, 8]}
    assert f.data["dim"] == 1 and f.data["differing_dims"] == [0] and (f.data["expected"], f.data["actual"]) == (12, 8)
    assert "text (12, *), extra (8, *)" in f.message
    assert f"made by embed (nn.Embedding(100, 16), line {line_of('embed-made')}) giving (8, 12, 16)" in f.message
    assert f"then mean at line {line_of('mean-line')}" in f.message


def test_stack_names_the_list_elements():
    feats = [torch.randn(3, 4), torch.randn(3, 5)]
    seen, dr = watched(lambda: torch.stack(feats))  # stack-line
    assert_same_error(plain_error(lambda: torch.stack(feats)), seen)
    f = only_finding(dr)
    assert f.data["shapes"] == {"feats[0]": [3, 4], "feats[1]": [3, 5]} and f.data["differing_dims"] == [1]


def test_cross_entropy_of_sequence_logits_says_the_classes_are_read_from_dim_1():
    torch.manual_seed(0)
    batch, time, vocab = 4, 7, 30
    head = nn.Linear(16, vocab)
    criterion = nn.CrossEntropyLoss()
    h, targets = torch.randn(batch, time, 16), torch.randint(0, vocab, (batch, time))

    def step():
        logits = head(h)
        criterion(logits, targets).backward()  # seq-loss

    seen, dr = watched(step)
    assert_same_error(plain_error(step), seen)
    f = only_finding(dr)
    assert f.line == line_of("seq-loss")
    assert f.data["shapes"] == {"logits": [batch, time, vocab], "targets": [batch, time]}
    assert f.data["expected"] == [batch, vocab] and f.data["actual"] == [batch, time]
    assert f.data["input_batch"] == f.data["target_batch"] == batch
    assert f"logits.reshape(-1, {vocab}), targets.reshape(-1)" in f.fix
    assert torch.isfinite(criterion(head(h).reshape(-1, vocab), targets.reshape(-1)))  # the fix runs


def test_cross_entropy_with_a_target_of_another_batch_size_gives_both_batches():
    logits = torch.randn(64, 10, requires_grad=True)
    target = torch.randint(0, 10, (32,))
    seen, dr = watched(lambda: F.cross_entropy(logits, target))  # batch-loss
    plain = plain_error(lambda: F.cross_entropy(logits, target))
    assert_same_error(plain, seen)
    assert type(seen) is ValueError
    f = only_finding(dr)
    assert f.line == line_of("batch-loss") and f.data["subkind"] == "loss-batch"
    assert (f.data["input_batch"], f.data["target_batch"]) == (64, 32)
    assert "64 rows (batch 64) but 32 targets (batch 32)" in f.message and "2x as many rows" in f.message


def test_binary_cross_entropy_target_shape_suggests_the_squeeze():
    model = nn.Linear(5, 1)
    x, y = torch.randn(16, 5), torch.rand(16)
    seen, dr = watched(lambda: F.binary_cross_entropy_with_logits(model(x), y))
    assert_same_error(plain_error(lambda: F.binary_cross_entropy_with_logits(model(x), y)), seen)
    f = only_finding(dr)
    assert f.data["shapes"] == {"model(x)": [16, 1], "y": [16]} and "model(x).squeeze(-1)" in f.fix


def test_recurrent_layers_own_check_is_explained_from_the_traceback():
    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(50, 32)
            self.lstm = nn.LSTM(64, 16, batch_first=True)  # lstm-made

        def forward(self, tokens):
            out, _ = self.lstm(self.embed(tokens))  # lstm-call
            return out

    model, tokens = Tagger(), torch.randint(0, 50, (4, 9))
    seen, dr = watched(lambda: model(tokens))
    assert_same_error(plain_error(lambda: model(tokens)), seen)
    f = only_finding(dr)
    assert f.line == line_of("lstm-call") and f.data["subkind"] == "rnn-input"
    assert (f.data["expected"], f.data["actual"]) == (64, 32) and f.data["shapes"] == {"self.embed(tokens)": [4, 9, 32]}
    assert f"lstm = nn.LSTM(64, 16, batch_first=True) (line {line_of('lstm-made')}) expects input_size 64" in f.message


def test_an_error_raised_after_the_watched_steps_is_explained_from_its_traceback():
    model = nn.Linear(20, 2)
    data = torch.randn(100, 4, 5)

    def train():
        for i in range(0, 100, 32):
            x = data[i : i + 32]
            flat = x.view(32, -1)  # late-view
            model(flat).sum().backward()

    seen, dr = watched_unstopped(train, steps=1)
    assert_same_error(plain_error(train), seen)
    f = only_finding(dr)
    # by hand: the last batch holds 100 - 96 = 4 samples, 4 * 20 = 80 elements
    assert f.line == line_of("late-view") and f.data["shapes"] == {"x": [4, 4, 5]} and f.data["numel"] == 80
    assert "x.view(x.size(0), -1)" in f.fix


def watched_unstopped(fn, steps):
    dr = None
    with pytest.raises(Exception) as info:
        with gw.doctor.watch(steps=steps, stop=False) as dr:
            fn()
    return info.value, dr


def test_an_error_caught_and_handled_gives_no_finding():
    model = nn.Linear(12, 2)
    x = torch.randn(4, 3, 4).transpose(1, 2)
    with gw.doctor.watch() as dr:
        for _ in range(3):
            try:
                flat = x.view(4, 12)
            except RuntimeError:
                flat = x.reshape(4, 12)
            model(flat).sum().backward()
    assert dr.findings == [] and dr.internal_errors == []


def test_a_crash_caused_by_a_caught_shape_error_is_explained_at_the_op():
    x = torch.randn(4, 3)

    def load():
        try:
            return x.view(5, -1)  # caught-view
        except RuntimeError as exc:
            raise ValueError("could not batch the input") from exc

    seen, dr = watched(load)
    assert type(seen) is ValueError and str(seen) == "could not batch the input"
    f = only_finding(dr)
    assert f.line == line_of("caught-view") and f.data["shapes"] == {"x": [4, 3]}


def test_a_later_unrelated_crash_is_not_blamed_on_a_handled_shape_error():
    x = torch.randn(4, 3)

    def run():
        try:
            x.view(5, -1)
        except RuntimeError:
            pass
        raise KeyError("missing config")

    seen, dr = watched(run)
    assert type(seen) is KeyError and dr.findings == []


def stale_backward():
    w = torch.randn(3, 4, requires_grad=True)
    loss = (w * 2).sum()
    loss.backward()
    loss.backward()


def test_errors_that_are_not_about_shapes_give_no_finding():
    model = nn.Linear(3, 4)
    errors = [
        plain_error(lambda: model(torch.randn(2, 3, dtype=torch.float64))),  # mat1 and mat2 must have the same dtype
        plain_error(lambda: nn.Embedding(10, 4)(torch.tensor([11]))),  # index out of range in self
        plain_error(lambda: torch.randint(0, 2, (2, 2)).mean()),  # could not infer output dtype
        plain_error(stale_backward),  # Trying to backward through the graph a second time
    ]
    shape_errors = [
        plain_error(lambda: torch.randn(6).view(4, -1)),
        plain_error(lambda: torch.cat([torch.randn(2, 3), torch.randn(3, 2)], 1)),
        plain_error(lambda: torch.randn(3, 4).transpose(1, 2)),
    ]
    assert [is_shape_error(e) for e in errors] == [False, False, False, False]
    assert [is_shape_error(e) for e in shape_errors] == [True, True, True]
    seen, dr = watched(lambda: model(torch.randn(2, 3, dtype=torch.float64)))
    assert "dtype" in str(seen) and [f for f in dr.findings if f.kind == "shape-mismatch"] == []

    def own_check():
        x = torch.randn(4, 3)
        assert x.shape[1] == 4, "expected 4 features, got size 3"

    seen, dr = watched(own_check)
    assert type(seen) is AssertionError and dr.findings == []  # the user's own assert: not an op's error


def test_the_cli_reports_it_with_the_crash_and_exits_1(tmp_path, capsys):
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            torch.manual_seed(0)
            model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 30 * 30, 10))
            images = torch.randn(16, 3, 28, 28)
            labels = torch.randint(0, 10, (16,))
            for _ in range(3):
                loss = nn.functional.cross_entropy(model(images), labels)
                loss.backward()
            """
        )
    )
    out = tmp_path / "report.json"
    code = cli.main(["doctor", str(script), "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 1
    report = json.loads(out.read_text())
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 30 * 30, 10))
    plain = plain_error(lambda: reference(torch.randn(16, 3, 28, 28)))
    assert report["crashed"]["type"] == type(plain).__name__ and report["crashed"]["message"] == str(plain)
    assert report["internal_errors"] == [] and report["steps"] == 0
    [f] = report["findings"]
    # by hand: a 3x3 convolution of 28x28 leaves 26x26, so 8 * 26 * 26 = 5408 features, not 7200
    assert (f["kind"], f["severity"], f["line"]) == ("shape-mismatch", "error", 10)
    assert (f["data"]["expected"], f["data"]["actual"]) == (8 * 30 * 30, 8 * 26 * 26)
    assert "ERROR shape-mismatch at" in text and f"The script raised RuntimeError: {plain}" in text


def test_nothing_is_left_behind_and_the_users_tensors_are_freed():
    before = global_state()
    model = nn.Linear(10, 2)
    refs = []

    def step():
        x = torch.randn(5, 7)
        refs.append(weakref.ref(x))
        model(x)

    seen, dr = watched(step)
    assert global_state() == before
    assert only_finding(dr).data["shapes"] == {"x": [5, 7]}
    del seen, dr
    gc.collect()
    assert refs[0]() is None  # no cache keeps the exception, its frames or the tensors they hold


def test_other_shape_errors_get_their_figures():
    """One case per family of message, each figure worked out by hand; all checked, then reported together."""
    conv, norm = nn.Conv2d(3, 8, 3), nn.BatchNorm1d(20)
    images, features = torch.randn(2, 16, 16, 3), torch.randn(4, 10)
    cls, w, x = torch.zeros(1, 1, 8), torch.randn(5, 7), torch.randn(3, 6)
    cases = {
        "conv channels-last": (lambda: conv(images), (3, 16), "images.permute(0, 3, 1, 2)"),
        "batch norm features": (lambda: norm(features), (20, 10), "nn.BatchNorm1d(10)"),
        "expand": (lambda: cls.expand(4, 5, 9), (9, 8), "dim 2"),
        "einsum": (lambda: torch.einsum("bi,ij->bj", x, w), (6, 5), "labelled i"),
        "broadcast": (lambda: x + w, (6, 7), "agree"),
    }
    problems = []
    for name, (fn, (expected, actual), fix) in cases.items():
        seen, dr = watched(fn)
        hits = [f for f in dr.findings if f.kind == "shape-mismatch"]
        if type(seen) is not type(plain_error(fn)) or len(hits) != 1:
            problems.append(f"{name}: {seen!r}, {hits}")
            continue
        f = hits[0]
        if (f.data["expected"], f.data["actual"]) != (expected, actual) or fix not in f.fix:
            problems.append(f"{name}: {f.data} / {f.fix}")
    assert not problems, "\n".join(problems)
