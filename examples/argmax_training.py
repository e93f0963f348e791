"""Train a router that makes a hard ``argmax`` choice: with ``torch.argmax``, then with gradwise.

The task: a linear router reads an input ``x`` and picks ONE of ``C`` fixed codebook vectors;
the prediction is the picked vector and the loss is its squared distance to the vector that a
hidden "teacher" rule would have picked. The codebook is a fixed tensor, so the router's
``nn.Linear`` is the only thing that can learn, and only through the ``argmax``.

* ``torch.argmax`` returns integer indices: autograd stops there. The loss has no
  ``grad_fn``, the router's ``.grad`` stays ``None``, ``optimizer.step()`` does nothing.
* ``gw.ops.argmax_onehot`` returns the same one-hot choice in the forward pass and the
  gradient of ``softmax(logits)`` in the backward pass, so the router learns.

Run it from the repository root::

    python examples/argmax_training.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import gradwise as gw

IN_FEATURES = 16  # size of an input x
NUM_CHOICES = 8  # C, the number of codebook entries the router picks from
CODE_DIM = 4  # size of a codebook vector
NUM_TRAIN = 1024
NUM_EVAL = 1024
STEPS = 200
LR = 0.05
SEED = 0


def make_task(seed: int = SEED) -> dict[str, torch.Tensor]:
    """The fixed data: a codebook, a teacher rule, and train / held-out inputs with targets.

    Returns:
        ``codebook (C, CODE_DIM)``; ``x_train (NUM_TRAIN, IN_FEATURES)`` with its
        ``choice_train (NUM_TRAIN,)`` (the teacher's pick) and ``target_train`` (the picked
        codebook vectors); the same for ``*_eval``.
    """
    g = torch.Generator().manual_seed(seed)
    codebook = torch.randn(NUM_CHOICES, CODE_DIM, generator=g)
    teacher = torch.randn(IN_FEATURES, NUM_CHOICES, generator=g)
    task = {"codebook": codebook}
    for split, n in (("train", NUM_TRAIN), ("eval", NUM_EVAL)):
        x = torch.randn(n, IN_FEATURES, generator=g)
        choice = (x @ teacher).argmax(-1)
        task[f"x_{split}"] = x
        task[f"choice_{split}"] = choice
        task[f"target_{split}"] = codebook[choice]
    return task


def pick(logits: torch.Tensor, codebook: torch.Tensor, use_gradwise: bool) -> torch.Tensor:
    """The codebook vector at ``argmax(logits)`` for each row: ``(N, C), (C, D) -> (N, D)``."""
    if use_gradwise:
        return gw.ops.argmax_onehot(logits) @ codebook
    return codebook[logits.argmax(-1)]


def train(use_gradwise: bool, steps: int = STEPS, seed: int = SEED) -> dict:
    """Train a fresh router (same data and same initial weights for both versions).

    Args:
        use_gradwise: pick with ``gw.ops.argmax_onehot`` (True) or ``torch.argmax`` (False).
        steps: full-batch Adam steps.
        seed: seed of the data and of the router's initial weights.

    Returns:
        A dict with ``losses`` (``steps + 1`` floats: the training loss before each step and
        after the last), ``loss_requires_grad`` (of the first loss), ``backward_error`` (the
        message of the error ``loss.backward()`` raised on the first step, or None),
        ``grad_is_none`` (parameter name -> whether its ``.grad`` is None after the first
        backward), ``grad_norm`` (parameter name -> the norm of that ``.grad``, or None),
        ``initial_accuracy`` and ``accuracy`` (fraction of held-out inputs on which the
        router picks the teacher's entry, before and after training), and the ``router``.
    """
    task = make_task(seed)
    codebook = task["codebook"]
    torch.manual_seed(seed)
    router = nn.Linear(IN_FEATURES, NUM_CHOICES)
    optimizer = torch.optim.Adam(router.parameters(), lr=LR)

    def accuracy() -> float:
        with torch.no_grad():
            return (router(task["x_eval"]).argmax(-1) == task["choice_eval"]).float().mean().item()

    def training_loss() -> torch.Tensor:
        return F.mse_loss(pick(router(task["x_train"]), codebook, use_gradwise), task["target_train"])

    initial_accuracy = accuracy()
    losses = []
    loss_requires_grad, backward_error, grad_norm = None, None, {}
    for step in range(steps):
        optimizer.zero_grad()
        loss = training_loss()
        losses.append(loss.item())
        if step == 0:
            loss_requires_grad = loss.requires_grad
            try:
                loss.backward()
            except RuntimeError as e:  # what a user of torch.argmax hits here
                backward_error = str(e)
            grad_norm = {n: None if p.grad is None else p.grad.norm().item() for n, p in router.named_parameters()}
        elif loss.requires_grad:
            loss.backward()
        optimizer.step()  # skips every parameter whose .grad is None
    with torch.no_grad():
        losses.append(training_loss().item())
    return {
        "losses": losses,
        "loss_requires_grad": loss_requires_grad,
        "backward_error": backward_error,
        "grad_is_none": {n: g is None for n, g in grad_norm.items()},
        "grad_norm": grad_norm,
        "initial_accuracy": initial_accuracy,
        "accuracy": accuracy(),
        "router": router,
    }


def _grad_report(result: dict) -> list[str]:
    if result["backward_error"] is None:
        lines = ["loss.requires_grad is True: loss.backward() runs"]
    else:
        lines = [
            "loss.requires_grad is False: loss.backward() raises",
            f"  RuntimeError: {result['backward_error']}",
        ]
    for name, norm in result["grad_norm"].items():
        grad = "None  -> optimizer.step() leaves it as it is" if norm is None else f"a tensor (norm {norm:.3f})"
        lines.append(f"router.{name}.grad is {grad}")
    return lines


def main(steps: int = STEPS, seed: int = SEED, rows: int = 20) -> None:
    plain = train(use_gradwise=False, steps=steps, seed=seed)
    hard = train(use_gradwise=True, steps=steps, seed=seed)

    print(f"A linear router picks 1 of {NUM_CHOICES} fixed codebook vectors with argmax; the loss is the")
    print("MSE between the picked vector and the one a hidden teacher rule picks. The router can only")
    print(f"learn through the argmax. Same data, same initial weights; {steps} full-batch Adam steps.")
    print()
    print("After the first loss.backward():")
    for label, result in (
        ("torch.argmax:          y = codebook[logits.argmax(-1)]", plain),
        ("gw.ops.argmax_onehot:  y = gw.ops.argmax_onehot(logits) @ codebook", hard),
    ):
        print("  " + label)
        for line in _grad_report(result):
            print("    " + line)
    print()

    every = max(1, steps // rows)
    header = f"{'step':>6} | {'torch.argmax':>12} | {'gw.ops.argmax_onehot':>20}"
    print("training loss (MSE)")
    print(header)
    print("-" * len(header))
    for step in [*range(0, steps, every), steps]:
        print(f"{step:>6} | {plain['losses'][step]:>12.4f} | {hard['losses'][step]:>20.4f}")
    print()

    chance = f"1/{NUM_CHOICES} = {1 / NUM_CHOICES:.1%}"
    print(f"Share of held-out inputs on which the router picks the teacher's entry (chance: {chance}):")
    print(
        f"  torch.argmax {plain['initial_accuracy']:.1%} -> {plain['accuracy']:.1%} (unchanged), "
        f"gw.ops.argmax_onehot {hard['initial_accuracy']:.1%} -> {hard['accuracy']:.1%}."
    )
    print("torch.argmax cuts the graph: the router gets no gradient and the loss stays flat.")
    print("gw.ops.argmax_onehot makes the same hard choice but passes back a softmax gradient, so it learns.")


if __name__ == "__main__":
    main()
