"""The doctor on code shaped like real training code: several models and optimizers,
models made anew in a loop (identity survives garbage collection), names after the
variables that hold the models, its own faults counted, and nothing left behind."""

import gc
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradwise as gw
from gradwise.doctor import StopWatching
from tests.doctor.instrumentation import global_state
from tests.doctor.source import line_of


def problems(dr):
    return [f for f in dr.findings if f.severity in ("error", "warning")]


def test_gan_with_two_optimizers_and_a_detached_fake_is_clean():
    torch.manual_seed(0)
    generator = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    discriminator = nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=1e-3)
    criterion = nn.BCEWithLogitsLoss()
    with gw.doctor.watch() as dr:
        for _ in range(4):
            real, fake = torch.randn(32, 2), generator(torch.randn(32, 4))
            opt_d.zero_grad()
            loss_d = criterion(discriminator(real), torch.ones(32, 1))
            loss_d = loss_d + criterion(discriminator(fake.detach()), torch.zeros(32, 1))
            loss_d.backward()
            opt_d.step()
            opt_g.zero_grad()
            criterion(discriminator(fake), torch.ones(32, 1)).backward()  # also fills the discriminator's grads
            opt_g.step()
    assert problems(dr) == [], dr.report()
    assert dr.steps == 8 and dr.internal_errors == []


def test_models_and_optimizers_made_anew_in_a_loop_are_clean_and_ids_may_be_reused():
    torch.manual_seed(0)
    x, y = torch.randn(30, 5), torch.randint(0, 2, (30,))
    ids = set()
    with gw.doctor.watch() as dr:
        for _fold in range(6):
            model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            ids.add(id(model))
            for _ in range(2):
                optimizer.zero_grad()
                F.cross_entropy(model(x), y).backward()
                optimizer.step()
            del model, optimizer
            gc.collect()
    assert problems(dr) == [], dr.report()
    assert dr.steps == 12


def test_the_real_bug_is_still_found_among_several_models():
    torch.manual_seed(0)
    generator = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    critic = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 1))
    opt_g = torch.optim.RMSprop(generator.parameters(), lr=1e-3)
    opt_c = torch.optim.RMSprop(critic.parameters(), lr=1e-3)
    with gw.doctor.watch() as dr:
        for _ in range(3):
            fake = generator(torch.randn(16, 4))
            loss_c = critic(fake.detach()).mean() - critic(torch.randn(16, 2)).mean()
            opt_c.zero_grad()
            loss_c.backward()
            opt_c.step()
            opt_g.zero_grad()
            loss_g = -critic(fake.detach()).mean()  # generator-cut
            loss_g.backward()
            opt_g.step()
    cut = [f for f in dr.findings if f.kind == "graph-break"]
    assert len(cut) == 1 and cut[0].line == line_of("generator-cut")
    assert set(cut[0].parameters) == {
        "generator.0.weight",
        "generator.0.bias",
        "generator.2.weight",
        "generator.2.bias",
    }


def test_missing_zero_grad_is_judged_per_optimizer():
    torch.manual_seed(0)
    generator, discriminator = nn.Linear(4, 2), nn.Linear(2, 1)
    opt_g = torch.optim.SGD(generator.parameters(), lr=0.01)
    opt_d = torch.optim.SGD(discriminator.parameters(), lr=0.01)
    with gw.doctor.watch() as dr:
        for _ in range(3):
            fake = generator(torch.randn(8, 4))
            real_term = F.softplus(-discriminator(torch.randn(8, 2))).mean()
            (real_term + F.softplus(discriminator(fake.detach())).mean()).backward()
            opt_d.step()  # never zeroed
            opt_g.zero_grad()
            F.softplus(-discriminator(fake)).mean().backward()
            opt_g.step()
    found = [f for f in dr.findings if f.kind == "missing-zero-grad"]
    assert len(found) == 1 and found[0].line == line_of("never zeroed")
    assert set(found[0].parameters) == {"discriminator.weight", "discriminator.bias"}


def test_closure_without_zero_grad_is_found_and_with_it_is_clean():
    def run(zero):
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        optimizer = torch.optim.LBFGS(model.parameters(), max_iter=4)
        x, y = torch.randn(16, 3), torch.randn(16, 1)

        def closure():
            if zero:
                optimizer.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            return loss

        with gw.doctor.watch(steps=6) as dr:
            for _ in range(3):
                optimizer.step(closure)  # lbfgs-step
        return dr

    assert problems(run(zero=True)) == []
    found = problems(run(zero=False))
    assert [(f.kind, f.line) for f in found] == [("missing-zero-grad", line_of("lbfgs-step"))]


def test_parameters_are_named_after_the_variables_holding_the_models():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    teacher = nn.Sequential(nn.Linear(4, 2)).requires_grad_(False)
    with gw.doctor.watch() as dr:
        optimizer = torch.optim.Adam(student[0].parameters(), lr=1e-3)  # student-optimizer
        for _ in range(2):
            x = torch.randn(8, 4)
            loss = F.mse_loss(student(x), teacher(x))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    (found,) = problems(dr)
    assert found.kind == "parameter-not-optimized" and found.line == line_of("student-optimizer")
    assert found.parameters == ("student.1.bias", "student.1.weight")


def test_stop_watching_is_not_swallowed_by_except_exception():
    assert issubclass(StopWatching, BaseException) and not issubclass(StopWatching, Exception)
    model = nn.Linear(2, 1)
    after = []
    with gw.doctor.watch(steps=1) as dr:
        for _ in range(3):
            try:
                model(torch.randn(3, 2)).sum().backward()
            except Exception:  # a user's broad handler
                pass
            after.append(True)
    assert dr.stopped and dr.steps == 1 and len(after) == 1


def test_an_internal_fault_is_counted_and_said_and_never_breaks_the_program(monkeypatch):
    from gradwise.doctor._checks.loss_input import LossInput

    def broken(self, event):
        raise ValueError("synthetic fault")

    monkeypatch.setattr(LossInput, "on_op", broken)
    model = nn.Linear(3, 2)
    with gw.doctor.watch() as dr:
        loss = F.cross_entropy(model(torch.randn(4, 3)), torch.tensor([0, 1, 0, 1]))
        loss.backward()
    assert model.weight.grad is not None
    assert dr.internal_errors == ["loss-input check (on_op): ValueError: synthetic fault"]
    assert "1 internal error(s)" in dr.report() and "synthetic fault" in dr.report()
    data = json.loads(dr.to_json())
    assert data["internal_errors"] == dr.internal_errors and data["steps"] == 1 and data["crashed"] is None


def test_nothing_is_left_behind_also_when_the_code_raises():
    before = global_state()
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(KeyError, match="user error"):
        with gw.doctor.watch():
            model(torch.randn(1, 2)).sum().backward()
            opt.step()
            raise KeyError("user error")
    assert global_state() == before
    with gw.doctor.watch(steps=1):
        for _ in range(3):
            model(torch.randn(1, 2)).sum().backward()
    assert global_state() == before
    assert not model._forward_hooks and not model._forward_pre_hooks and not opt._optimizer_step_pre_hooks


def test_bad_arguments_are_refused_with_clear_errors():
    with pytest.raises(TypeError, match=r"watch: model must be a torch.nn.Module or None \(got str\)"):
        with gw.doctor.watch("model"):
            pass
    with pytest.raises(ValueError, match=r"watch: steps must be a positive integer or None \(got 0\)"):
        with gw.doctor.watch(steps=0):
            pass
    with pytest.raises(TypeError, match=r"watch: optimizer must be a torch.optim.Optimizer"):
        with gw.doctor.watch(optimizer=[1]):
            pass


def test_every_function_named_in_a_fix_exists():
    source = "\n".join(p.read_text() for p in Path(gw.doctor.__file__).parent.rglob("*.py"))
    names = set(re.findall(r"gw\.((?:ops|constrain|cluster|per_sample|testing)(?:\.\w+)?)", source))
    assert names, "no feature function is named in the doctor's fix texts"
    for name in sorted(names):
        obj = gw
        for part in name.split("."):
            assert hasattr(obj, part), f"the doctor names gw.{name}, which does not exist"
            obj = getattr(obj, part)


def test_per_sample_warns_where_the_doctor_warns():
    from gradwise.errors import GradwiseWarning

    model = nn.Sequential(nn.Linear(3, 4), nn.LogSoftmax(dim=-1))
    x, y = torch.randn(6, 3), torch.randint(0, 4, (6,))
    with pytest.warns(GradwiseWarning, match=r"\[log-probabilities-into-cross-entropy\].*redundant, harmless"):
        gw.per_sample.norms(model, F.cross_entropy, x, y)


def test_a_run_whose_training_is_in_child_processes_says_so():
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    with gw.doctor.watch() as dr:
        worker = ctx.Process(target=int)
        worker.start()
        worker.join()
    assert dr.steps == 0 and dr.child_processes == 1
    assert "started 1 child process(es)" in dr.report()
    assert multiprocessing.process.BaseProcess.start.__module__ == "multiprocessing.process"


def test_a_library_buffer_switched_to_requires_grad_is_state_even_after_the_model_is_gone():
    # vector_quantize_pytorch's VectorQuantize: `loss = self.zero; loss.requires_grad_()`
    class Quantizer(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)
            self.register_buffer("zero", torch.tensor(0.0), persistent=False)

        def forward(self, x):
            loss = self.zero
            loss.requires_grad_()
            z = self.proj(x)
            return z, loss + 0.25 * (z - z.round().detach()).pow(2).mean()

    def train():
        model = Quantizer()
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        for _ in range(3):
            z, aux = model(torch.randn(8, 4))
            opt.zero_grad()
            (z.pow(2).mean() + aux).backward()
            opt.step()

    with gw.doctor.watch() as dr:
        train()
        gc.collect()  # the model is gone before the doctor's final judgement
    assert problems(dr) == [], dr.report()


@pytest.mark.parametrize("role", ["random target network", "teacher without no_grad"])
def test_a_model_in_no_optimizer_whose_output_is_only_a_loss_target_is_clean(role):
    torch.manual_seed(0)
    fixed = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 4))
    learner = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(learner.parameters(), 0.1)
    with gw.doctor.watch() as dr:
        for _ in range(4):
            x = torch.randn(32, 8)
            if role == "random target network":
                loss = F.mse_loss(learner(x), fixed(x))
            else:
                loss = F.kl_div(F.log_softmax(learner(x), -1), F.softmax(fixed(x), -1), reduction="batchmean")
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert fixed[0].weight.grad is not None  # it does receive gradients, and is in no optimizer
    assert problems(dr) == [], dr.report()


def test_a_model_left_out_of_every_optimizer_is_reported_at_the_optimizer_that_stepped():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
    attention = nn.Linear(16, 1)  # a separate module, forgotten in the optimizer
    with gw.doctor.watch() as dr:
        opt = torch.optim.Adam(encoder.parameters(), 1e-3)
        for _ in range(3):
            h = encoder(torch.randn(4, 5, 8))
            pooled = (attention(h).softmax(1) * h).sum(1)
            loss = pooled.pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    (finding,) = problems(dr)
    assert finding.kind == "parameter-not-optimized" and finding.parameters == ("attention.bias", "attention.weight")
    here = test_a_model_left_out_of_every_optimizer_is_reported_at_the_optimizer_that_stepped.__code__
    assert finding.line == here.co_firstlineno + 5  # the optimizer's construction


def test_a_watch_goes_on_to_an_optimizers_second_step_when_it_accumulates_over_several_backwards():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    with gw.doctor.watch(steps=5) as dr:
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        for i in range(40):
            model(torch.randn(8, 4)).pow(2).mean().backward()
            if i % 4 == 3:
                opt.step()  # zero_grad forgotten: the second step sees 8 backwards' gradients
    assert dr.steps == 8 and dr.stopped  # 5 asked, extended to the optimizer's second step
    assert [f.kind for f in problems(dr)] == ["missing-zero-grad"]


def test_gumbel_noise_shaped_like_the_logits_is_not_a_cut():
    torch.manual_seed(0)
    encoder = nn.Linear(6, 4)
    decoder = nn.Linear(4, 6)
    with gw.doctor.watch() as dr:
        opt = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], 1e-3)
        for _ in range(3):
            x = torch.randn(16, 6)
            logits = encoder(x)
            g = -torch.log(-torch.log(torch.rand_like(logits) + 1e-9) + 1e-9)
            z = F.one_hot((logits + g).argmax(-1), 4).float()
            loss = F.mse_loss(decoder(z), x)
            opt.zero_grad()
            loss.backward()
            opt.step()
    (finding,) = problems(dr)
    assert finding.kind == "graph-break" and finding.data["op"] == "argmax"
    assert finding.parameters == ("encoder.bias", "encoder.weight")


class _StreamingGRU(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(3, 8, batch_first=True)
        self.head = nn.Linear(8, 2)
        self.state = None

    def forward(self, chunk):
        out, h = self.gru(chunk, self.state)
        self.state = h  # stored with its history: the line to point at
        return self.head(out[:, -1])


def test_a_recurrent_state_stored_on_the_module_is_pointed_at_where_it_is_stored():
    import inspect

    torch.manual_seed(0)
    model = _StreamingGRU()
    with gw.doctor.watch() as dr, pytest.raises(RuntimeError, match="second time"):
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        for _ in range(3):
            loss = F.cross_entropy(model(torch.randn(4, 5, 3)), torch.randint(0, 2, (4,)))
            opt.zero_grad()
            loss.backward()
            opt.step()
    (finding,) = problems(dr)
    lines, start = inspect.getsourcelines(_StreamingGRU.forward)
    stored = start + next(i for i, text in enumerate(lines) if "self.state = h" in text)
    assert finding.kind == "stale-graph" and finding.line == stored


def test_reading_requires_grad_is_no_bandaid_and_a_backward_refused_for_a_cut_is_explained_by_it():
    torch.manual_seed(0)
    router = nn.Linear(4, 3)
    codebook = torch.randn(3, 2)
    with gw.doctor.watch() as dr:
        opt = torch.optim.Adam(router.parameters(), 1e-2)
        for _ in range(3):
            picked = codebook[router(torch.randn(8, 4)).argmax(-1)]
            loss = F.mse_loss(picked, torch.zeros(8, 2))
            opt.zero_grad()
            if loss.requires_grad:  # a read, not a band-aid
                loss.backward()
            else:
                with pytest.raises(RuntimeError, match="does not require grad"):
                    loss.backward()
            opt.step()
    (finding,) = problems(dr)
    assert finding.kind == "graph-break" and finding.data["op"] == "argmax"
    assert finding.parameters == ("bias", "weight")
