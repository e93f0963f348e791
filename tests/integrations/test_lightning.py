"""GradwiseCallback in a real Lightning Trainer on CPU, against figures the LightningModule
computes itself in its own hooks."""

import doctest
import inspect
import math
import subprocess
import sys

import pytest

pytest.importorskip("lightning")

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from gradwise.doctor import GradientAlert
from gradwise.errors import ArgumentError, ArgumentTypeError
from gradwise.integrations.lightning import GradwiseCallback
from tests.doctor.instrumentation import global_state

pytestmark = [
    pytest.mark.filterwarnings("ignore:The '.*dataloader' does not have many workers"),
    # lightning 2.6's CombinedLoader builds a torch LeafSpec, which torch 2.13 deprecates, on every fit
    pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning"),
]

STEPS = 6
REL = 1e-5


class Tiny(pl.LightningModule):
    """Linear-ReLU-Linear; keeps, per optimizer step, the figures the callback must report."""

    def __init__(self, optimizer="sgd", nan_at=None, raise_at=None, nan_in_forward_at=None, log_loss=False):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
        self.optimizer_name = optimizer
        self.nan_at, self.raise_at, self.nan_in_forward_at = nan_at, raise_at, nan_in_forward_at
        self.log_loss = log_loss
        self.ref: list[dict] = []  # one per optimizer step, in order
        self.losses: dict[int, float] = {}  # global_step -> loss
        self.dead: dict[int, float] = {}  # global_step -> dead fraction of the ReLU's units
        self.batches = 0
        self.optimizers_made: list[torch.optim.Optimizer] = []

    def forward(self, x):
        h = self.net[1](self.net[0](x))
        if self.nan_in_forward_at is not None and self.global_step == self.nan_in_forward_at:
            h = h * float("nan")
        return self.net[2](h)

    def training_step(self, batch, batch_idx):
        self.batches += 1
        if self.raise_at is not None and self.global_step == self.raise_at:
            raise RuntimeError("boom in training_step")
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        if self.nan_at is not None and self.global_step == self.nan_at:
            loss = loss * float("nan")
        with torch.no_grad():
            self.dead.setdefault(self.global_step, float((torch.relu(self.net[0](x)).amax(0) <= 0).float().mean()))
        self.losses.setdefault(self.global_step, float(loss.detach()))
        if self.log_loss:
            self.log("train_loss", loss, on_step=True, on_epoch=False)
        return loss

    def configure_optimizers(self):
        if self.optimizer_name == "adam":
            opt = torch.optim.Adam(self.parameters(), lr=1e-2)
        elif self.optimizer_name == "lbfgs":
            opt = torch.optim.LBFGS(self.parameters(), lr=0.1, max_iter=3)
        else:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
        self.optimizers_made.append(opt)
        return opt

    def on_before_optimizer_step(self, optimizer):
        # Lightning calls it after the callback's hook and before clipping; LBFGS's closure calls it again
        if self.ref and self.ref[-1]["global_step"] == self.trainer.global_step:
            return
        self.ref.append(
            {
                "global_step": self.trainer.global_step,
                "grad": {n: float(p.grad.norm()) for n, p in self.named_parameters()},
                "before": {n: p.detach().clone() for n, p in self.named_parameters()},
            }
        )

    def on_train_batch_end(self, outputs, batch, batch_idx):
        ref = self.ref[-1]
        ref["param"] = {n: float(b.norm()) for n, b in ref["before"].items()}
        ref["update"] = {n: float((p.detach() - ref["before"][n]).norm()) for n, p in self.named_parameters()}
        ref["ratio"] = {n: ref["update"][n] / ref["param"][n] for n in ref["update"]}


class MemoryLogger(Logger):
    """Keeps every ``log_metrics`` call."""

    def __init__(self):
        super().__init__()
        self.logged: list[tuple[int, dict]] = []

    @property
    def name(self):
        return "memory"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.logged.append((step, dict(metrics)))


class FailingLogger(MemoryLogger):
    def log_metrics(self, metrics, step=None):
        if any(k.startswith("gradwise/") for k in metrics):
            raise OSError("disk full")
        super().log_metrics(metrics, step)


def loader(n=STEPS * 16):
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g))
    return DataLoader(data, batch_size=16)


def fit(model, callback, tmp_path, logger=None, max_steps=STEPS, val=None, **kwargs):
    kwargs.setdefault("num_sanity_val_steps", 0)
    kwargs.setdefault("log_every_n_steps", 1)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        callbacks=[callback],
        logger=logger if logger is not None else MemoryLogger(),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kwargs,
    )
    trainer.fit(model, loader(), val)
    return trainer


def close(a, b, rel=REL, abs_=1e-7):
    return a is not None and b is not None and math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


def mismatches(history, model, steps, batch_figures=True):
    """Every figure of the callback's records that differs from the module's own, as text
    (``batch_figures``: also the loss and the dead fraction, which the module measures once a batch)."""
    bad = []
    names = [n for n, _ in model.named_parameters()]
    if [r["step"] for r in history] != steps:
        return [f"steps {[r['step'] for r in history]} != {steps}"]
    for record in history:
        ref = model.ref[record["step"] - 1]
        if list(record["params"]) != names:
            bad.append(f"step {record['step']}: names {list(record['params'])} != {names}")
            continue
        for n in names:
            got = record["params"][n]
            wanted = {"grad_norm": ref["grad"][n], "param_norm": ref["param"][n], "update_ratio": ref["ratio"][n]}
            for key, want in wanted.items():
                if not close(got[key], want):
                    bad.append(f"step {record['step']} {n} {key}: {got[key]} != {want}")
            if got["nonfinite"] != 0:
                bad.append(f"step {record['step']} {n} nonfinite: {got['nonfinite']}")
        total = math.sqrt(sum(v * v for v in ref["grad"].values()))
        if not close(record["grad_norm_total"], total):
            bad.append(f"step {record['step']} grad_norm_total: {record['grad_norm_total']} != {total}")
        if not batch_figures:
            continue
        loss = model.losses[ref["global_step"]]
        if not close(record["loss"], loss):
            bad.append(f"step {record['step']} loss: {record['loss']} != {loss}")
        dead = model.dead[ref["global_step"]]
        if list(record["modules"]) != ["net.1"] or not close(record["modules"]["net.1"]["dead_fraction"], dead):
            bad.append(f"step {record['step']} modules: {record['modules']} (dead fraction {dead})")
    return bad


# --- the hooks left behind ----------------------------------------------------------------------

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def module_state(model):
    return {name: [dict(getattr(m, d)) for d in HOOK_DICTS] for name, m in model.named_modules()}


def assert_untouched(model, before_globals, before_modules):
    assert global_state() == before_globals
    assert module_state(model) == before_modules
    for opt in model.optimizers_made:
        assert dict(opt._optimizer_step_pre_hooks) == {}
        assert dict(opt._optimizer_step_post_hooks) == {}


# --- the figures --------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_records_match_the_module_own_figures(tmp_path, optimizer):
    model = Tiny(optimizer)
    g, m = global_state(), module_state(model)
    callback = GradwiseCallback()
    fit(model, callback, tmp_path)
    assert mismatches(callback.history, model, list(range(1, STEPS + 1))) == []
    assert callback.findings == []
    assert callback.internal_errors == []
    assert callback.monitor.attached is False
    assert_untouched(model, g, m)


def test_every_records_steps_1_3_5(tmp_path):
    model = Tiny()
    callback = GradwiseCallback(every=2)
    fit(model, callback, tmp_path)
    assert mismatches(callback.history, model, [1, 3, 5]) == []


def test_norms_are_before_clipping_and_the_update_after_it(tmp_path):
    model = Tiny()
    callback = GradwiseCallback()
    fit(model, callback, tmp_path, gradient_clip_val=0.01)
    assert mismatches(callback.history, model, list(range(1, STEPS + 1))) == []
    for record in callback.history:
        assert record["grad_norm_total"] > 0.1, record["grad_norm_total"]
        # SGD(lr=0.1) steps by the clipped gradient, whose total norm is the clip value
        update = math.sqrt(sum((v["update_ratio"] * v["param_norm"]) ** 2 for v in record["params"].values()))
        assert update == pytest.approx(0.1 * 0.01, rel=1e-3)


def test_lbfgs_closure_is_one_step(tmp_path):
    # Lightning calls on_before_optimizer_step at each of LBFGS's closure evaluations: one step is counted,
    # with the gradients of the first (at the weights the step starts from)
    model = Tiny("lbfgs")
    callback = GradwiseCallback()
    fit(model, callback, tmp_path)
    assert mismatches(callback.history, model, list(range(1, STEPS + 1)), batch_figures=False) == []


def test_lbfgs_record_does_not_depend_on_every(tmp_path):
    records = {}
    for every in (1, 2):
        torch.manual_seed(0)
        callback = GradwiseCallback(every=every)
        fit(Tiny("lbfgs"), callback, tmp_path)
        records[every] = {r["step"]: r for r in callback.history}
    for step in (3, 5):
        one, two = records[1][step], records[2][step]
        assert one["loss"] == pytest.approx(two["loss"], rel=REL)
        assert list(one["modules"]) == list(two["modules"])


def test_bf16_mixed_records_finite_figures(tmp_path):
    model = Tiny()
    callback = GradwiseCallback()
    fit(model, callback, tmp_path, precision="bf16-mixed")
    assert mismatches(callback.history, model, list(range(1, STEPS + 1))) == []
    figures = [v for r in callback.history for p in r["params"].values() for v in p.values()]
    assert figures and all(math.isfinite(v) for v in figures)
    assert callback.findings == []


def test_validation_batches_do_not_enter_the_records(tmp_path):
    model = Tiny()
    model.validation_step = lambda batch, batch_idx: model(batch[0]).mean()
    callback = GradwiseCallback()
    fit(model, callback, tmp_path, val=loader(32), num_sanity_val_steps=2, val_check_interval=2)
    assert mismatches(callback.history, model, list(range(1, STEPS + 1))) == []
    assert callback.internal_errors == []


# --- the loggers --------------------------------------------------------------------------------


def expected_metrics(record, prefix="gradwise"):
    out = {}
    for n, v in record["params"].items():
        for key in ("grad_norm", "param_norm", "update_ratio", "nonfinite"):
            out[f"{prefix}/{key}/{n}"] = v[key]
    out[f"{prefix}/dead_fraction/net.1"] = record["modules"]["net.1"]["dead_fraction"]
    out[f"{prefix}/grad_norm_total"] = record["grad_norm_total"]
    out[f"{prefix}/loss"] = record["loss"]
    return out


def test_loggers_get_the_figures_at_the_step_of_the_batch(tmp_path):
    memory = MemoryLogger()
    csv = CSVLogger(tmp_path, name="csv")
    model = Tiny(log_loss=True)
    callback = GradwiseCallback(every=2)
    fit(model, callback, tmp_path, logger=[memory, csv])
    ours = [(step, m) for step, m in memory.logged if any(k.startswith("gradwise/") for k in m)]
    assert [step for step, _ in ours] == [model.ref[r["step"] - 1]["global_step"] for r in callback.history]
    assert [step for step, _ in ours] == [0, 2, 4]
    for (_, metrics), record in zip(ours, callback.history, strict=True):
        assert metrics == expected_metrics(record)
    # the same step as Lightning gives this batch's self.log
    theirs = {step: m["train_loss"] for step, m in memory.logged if "train_loss" in m}
    for step, metrics in ours:
        assert metrics["gradwise/loss"] == pytest.approx(theirs[step], rel=REL)
    # and a real logger writes them
    import csv as csvlib

    with open(f"{csv.log_dir}/metrics.csv") as fh:
        rows = [r for r in csvlib.DictReader(fh) if r.get("gradwise/grad_norm_total")]
    assert [int(r["step"]) for r in rows] == [0, 2, 4]
    assert [float(r["gradwise/grad_norm_total"]) for r in rows] == pytest.approx(
        [r["grad_norm_total"] for r in callback.history], rel=REL
    )


class TwoOptimizers(Tiny):
    """Manual optimization, one optimizer a layer: two records a batch."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.totals: list[tuple[int, float, float]] = []  # (batch, net.0 grad norm, net.2 grad norm)

    def configure_optimizers(self):
        return [torch.optim.SGD(self.net[0].parameters(), lr=0.1), torch.optim.Adam(self.net[2].parameters(), lr=1e-2)]

    def training_step(self, batch, batch_idx):
        first, second = self.optimizers()
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        first.zero_grad()
        second.zero_grad()
        self.manual_backward(loss)
        norms = [math.sqrt(sum(float(p.grad.norm()) ** 2 for p in layer.parameters())) for layer in self.net[::2]]
        self.totals.append((batch_idx, *norms))
        first.step()
        second.step()

    def on_before_optimizer_step(self, optimizer):
        pass

    def on_train_batch_end(self, outputs, batch, batch_idx):
        pass


def test_manual_optimization_with_two_optimizers(tmp_path):
    memory = MemoryLogger()
    model = TwoOptimizers()
    callback = GradwiseCallback()
    fit(model, callback, tmp_path, logger=memory)  # max_steps counts both optimizers' steps: 3 batches
    assert [list(r["params"]) for r in callback.history] == [
        ["net.0.weight", "net.0.bias"],
        ["net.2.weight", "net.2.bias"],
    ] * 3
    logged = {
        (step, key): value
        for step, m in memory.logged
        for key, value in m.items()
        if key.startswith("gradwise/grad_norm_t")
    }
    want = {}
    for batch, first, second in model.totals:
        want[(batch, "gradwise/grad_norm_total/optimizer_0")] = pytest.approx(first, rel=REL)
        want[(batch, "gradwise/grad_norm_total/optimizer_1")] = pytest.approx(second, rel=REL)
    assert logged == want
    # at the steps Lightning logs this batch's self.log at
    assert sorted({step for step, _ in logged}) == sorted(step for step, m in memory.logged if "train_loss" in m)


def test_prefix_and_log_false(tmp_path):
    memory = MemoryLogger()
    callback = GradwiseCallback(prefix="gw")
    fit(Tiny(), callback, tmp_path, logger=memory)
    ours = [m for _, m in memory.logged if any(k.startswith("gw/") for k in m)]
    assert ours == [expected_metrics(r, "gw") for r in callback.history]
    memory = MemoryLogger()
    callback = GradwiseCallback(log=False)
    fit(Tiny(), callback, tmp_path, logger=memory)
    assert len(callback.history) == STEPS
    assert not [m for _, m in memory.logged if any(k.startswith("gradwise/") for k in m)]


def test_a_failing_logger_is_counted_not_raised(tmp_path):
    callback = GradwiseCallback()
    with pytest.warns(UserWarning, match=r"GradwiseCallback: 1 internal error\(s\).*OSError: disk full"):
        fit(Tiny(), callback, tmp_path, logger=FailingLogger())
    assert len(callback.history) == STEPS
    assert callback.internal_errors == [f"logging a record: OSError: disk full ({STEPS} times)"]


def test_a_fault_in_capture_is_counted_not_raised(tmp_path, monkeypatch):
    from gradwise.doctor import GradientMonitor

    def broken(self, optimizer):
        raise RuntimeError("no norms today")

    monkeypatch.setattr(GradientMonitor, "capture", broken)
    callback = GradwiseCallback()
    model = Tiny()
    with pytest.warns(UserWarning, match="capturing a step: RuntimeError: no norms today"):
        fit(model, callback, tmp_path)
    assert model.batches == STEPS
    assert callback.history == []
    assert callback.internal_errors == [f"capturing a step: RuntimeError: no norms today ({STEPS} times)"]


# --- alerts, exceptions, hooks ------------------------------------------------------------------


def test_nan_gives_a_nonfinite_finding_at_its_step(tmp_path):
    model = Tiny(nan_at=3)  # global_step 3 (0-based): the 4th optimizer step
    g, m = global_state(), module_state(model)
    tb = TensorBoardLogger(tmp_path, name="tb")
    texts = []
    tb.experiment.add_text = lambda tag, text, step: texts.append((tag, text, step))
    callback = GradwiseCallback()
    fit(model, callback, tmp_path, logger=tb)
    assert [(f.kind, f.step) for f in callback.findings] == [("non-finite", 4)]
    assert [r["step"] for r in callback.history] == list(range(1, STEPS + 1))
    assert all(v["nonfinite"] == 0 for r in callback.history[:3] for v in r["params"].values())
    assert callback.history[3]["params"]["net.0.weight"]["nonfinite"] == 16 * 4
    assert math.isnan(callback.history[3]["loss"])
    assert [(tag, "**non-finite**" in text and "at step 4" in text) for tag, text, _ in texts] == [
        ("gradwise/findings", True)
    ]
    assert callback.internal_errors == []
    assert_untouched(model, g, m)


def test_alerts_raise_stops_fit_and_detaches(tmp_path):
    model = Tiny(nan_in_forward_at=1)
    g, m = global_state(), module_state(model)
    callback = GradwiseCallback(alerts="raise")
    with pytest.raises(GradientAlert) as info:
        fit(model, callback, tmp_path)
    finding = info.value.finding
    assert (finding.kind, finding.step) == ("non-finite", 2)
    # the replay of that step's forward names the line that made the NaN
    lines, first = inspect.getsourcelines(Tiny.forward)
    nan_line = first + next(i for i, line in enumerate(lines) if 'h * float("nan")' in line)
    assert (finding.file, finding.line) == (__file__, nan_line)
    assert callback.findings == [finding]
    assert model.batches < STEPS
    assert callback.monitor.attached is False
    assert_untouched(model, g, m)


def test_exception_in_training_step_detaches(tmp_path):
    model = Tiny(raise_at=2)
    g, m = global_state(), module_state(model)
    callback = GradwiseCallback()
    with pytest.raises(RuntimeError, match="boom in training_step"):
        fit(model, callback, tmp_path)
    assert [r["step"] for r in callback.history] == [1, 2]
    assert callback.monitor.attached is False
    assert_untouched(model, g, m)


# --- arguments, import, example -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"every": 0}, ArgumentError, "GradwiseCallback: every must be a positive integer (got 0)"),
        ({"every": True}, ArgumentError, "GradwiseCallback: every must be a positive integer (got True)"),
        ({"alerts": "loud"}, ArgumentError, "GradwiseCallback: alerts must be True, False or 'raise' (got 'loud')"),
        ({"jsonl": 3}, ArgumentTypeError, "GradwiseCallback: jsonl must be a path or None (got int)"),
        ({"log": 1}, ArgumentTypeError, "GradwiseCallback: log must be True or False (got int)"),
        ({"prefix": ""}, ArgumentError, "GradwiseCallback: prefix must be a non-empty string (got '')"),
    ],
)
def test_argument_errors(kwargs, error, message):
    with pytest.raises(error) as info:
        GradwiseCallback(**kwargs)
    assert str(info.value) == message


def test_repr_and_jsonl(tmp_path):
    from gradwise.doctor import read_jsonl

    path = tmp_path / "log.jsonl"
    callback = GradwiseCallback(3, alerts="raise", jsonl=str(path), log=False, prefix="gw")
    assert repr(callback) == f"GradwiseCallback(every=3, alerts='raise', jsonl={str(path)!r}, log=False, prefix='gw')"
    assert repr(GradwiseCallback()) == "GradwiseCallback(every=1)"
    assert callback.history == [] and callback.findings == [] and callback.monitor is None
    fit(Tiny(), callback, tmp_path)
    assert [r["step"] for r in read_jsonl(path)] == [1, 4]


def test_import_gradwise_does_not_import_lightning():
    code = (
        "import gradwise, gradwise.integrations, sys; "
        "assert 'lightning' not in sys.modules and 'gradwise.integrations.lightning' not in sys.modules, "
        "sorted(m for m in sys.modules if 'lightning' in m)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_docstring_example_runs_in_full():
    import gradwise.integrations.lightning as module

    text = module.GradwiseCallback.__doc__.replace("# doctest: +SKIP", "")
    test = doctest.DocTestParser().get_doctest(text, {"GradwiseCallback": GradwiseCallback}, "example", None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test, out=lambda s: pytest.fail(s))
    assert runner.failures == 0 and runner.tries >= 8
