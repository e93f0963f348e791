"""The bundled example ``examples/argmax_training.py`` (what ``make demo`` runs)."""

import pytest
import torch
from torch import nn

from tests.examples import load_example, run_example


@pytest.fixture(scope="module")
def example():
    return load_example("argmax_training")


@pytest.fixture(scope="module")
def plain(example):
    return example.train(use_gradwise=False, steps=50, seed=0)


@pytest.fixture(scope="module")
def learned(example):
    return example.train(use_gradwise=True, seed=0)


def _reference_loss(example, router: nn.Linear, seed: int) -> float:
    """MSE of the argmax pick, in float64 with a Python loop over the rows."""
    task = example.make_task(seed)
    codebook = task["codebook"].double()
    with torch.no_grad():
        logits = router(task["x_train"]).tolist()
    total = 0.0
    for row, target in zip(logits, task["target_train"].double(), strict=True):
        picked = codebook[max(range(len(row)), key=row.__getitem__)]
        total += ((picked - target) ** 2).sum().item()
    return total / task["target_train"].numel()


def _reference_accuracy(example, router: nn.Linear, seed: int) -> float:
    task = example.make_task(seed)
    with torch.no_grad():
        chosen = router(task["x_eval"]).argmax(-1).tolist()
    return sum(c == t for c, t in zip(chosen, task["choice_eval"].tolist(), strict=True)) / len(chosen)


def test_torch_argmax_gives_no_gradient_and_a_flat_loss(example, plain):
    assert plain["loss_requires_grad"] is False
    assert "does not require grad" in plain["backward_error"]
    assert plain["grad_is_none"] == {"weight": True, "bias": True}
    assert all(p.grad is None for p in plain["router"].parameters())
    assert len(plain["losses"]) == 51
    assert plain["losses"] == [plain["losses"][0]] * 51
    # the router is exactly its initial self, built here independently
    torch.manual_seed(0)
    fresh = nn.Linear(example.IN_FEATURES, example.NUM_CHOICES)
    assert torch.equal(plain["router"].weight, fresh.weight)
    assert torch.equal(plain["router"].bias, fresh.bias)
    assert plain["losses"][0] == pytest.approx(_reference_loss(example, fresh, 0), rel=1e-5)
    assert plain["accuracy"] == plain["initial_accuracy"] == pytest.approx(_reference_accuracy(example, fresh, 0))


def test_argmax_onehot_learns(example, plain, learned):
    assert learned["loss_requires_grad"] is True
    assert learned["backward_error"] is None
    assert learned["grad_is_none"] == {"weight": False, "bias": False}
    assert all(norm > 0 for norm in learned["grad_norm"].values())
    # same data and initial weights, and argmax_onehot's forward value is the hard choice
    assert learned["losses"][0] == plain["losses"][0]
    assert len(learned["losses"]) == example.STEPS + 1
    assert learned["losses"][-1] < 0.25 * learned["losses"][0]
    # the reported loss and accuracy match the trained router, recomputed independently
    assert learned["losses"][-1] == pytest.approx(_reference_loss(example, learned["router"], 0), rel=1e-5)
    assert learned["accuracy"] == pytest.approx(_reference_accuracy(example, learned["router"], 0))
    chance = 1 / example.NUM_CHOICES
    assert learned["initial_accuracy"] < 2 * chance
    assert learned["accuracy"] > 0.6 > 4 * chance


def test_training_is_deterministic(example):
    first = example.train(use_gradwise=True, steps=20, seed=3)
    second = example.train(use_gradwise=True, steps=20, seed=3)
    assert first["losses"] == second["losses"]
    assert torch.equal(first["router"].weight, second["router"].weight)


def test_script_runs_and_prints_the_table():
    proc = run_example("argmax_training")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = [line for line in lines if line.split() == ["step", "|", "torch.argmax", "|", "gw.ops.argmax_onehot"]]
    assert len(header) == 1
    assert "router.weight.grad is None" in proc.stdout
    assert "router.weight.grad is a tensor" in proc.stdout
    rows = lines[lines.index(header[0]) + 2 :]
    rows = rows[: next(i for i, line in enumerate(rows) if not line.strip())]
    assert 10 <= len(rows) <= 25
    plain_losses = {row.split("|")[1].strip() for row in rows}
    assert len(plain_losses) == 1
    first, last = float(rows[0].split("|")[2]), float(rows[-1].split("|")[2])
    assert last < 0.25 * first
