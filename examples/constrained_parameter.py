"""A probability parameter trained toward 0.9: the transform-once bug, and gw.constrain.

A parameter that must stay in (0, 1) is stored unconstrained and mapped through a sigmoid.
Done once in ``__init__`` (``self.p = torch.sigmoid(self.raw)``), ``self.p`` is a tensor
computed once, with one graph: the first ``backward`` frees that graph, and the second
fails with "Trying to backward through the graph a second time". ``gw.constrain`` applies
the transform every time ``p`` is read, so every step builds a fresh graph, and the
optimizer updates the unconstrained tensor.

Run it from the repository root::

    python examples/constrained_parameter.py
"""

from __future__ import annotations

import torch
from torch import nn

import gradwise as gw

TARGET = 0.9
STEPS = 60


class TransformOnce(nn.Module):
    """The bug: the constrained value is computed once, in __init__."""

    def __init__(self):
        super().__init__()
        self.raw = nn.Parameter(torch.zeros(()))
        self.p = torch.sigmoid(self.raw)


class Constrained(nn.Module):
    """The fix: p is a parameter constrained to (0, 1), initialised by its constrained value."""

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(()))
        gw.constrain(self, "p", "unit_interval", init=0.5)


def train_transform_once(steps: int = 2) -> str | None:
    """Train TransformOnce; return the error message of the step that fails (None if none does)."""
    model = TransformOnce()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(steps):
        opt.zero_grad()
        loss = (model.p - TARGET) ** 2
        try:
            loss.backward()
        except RuntimeError as exc:
            return str(exc).split(" (or ")[0]
        opt.step()
    return None


def train_constrained(steps: int = STEPS, lr: float = 10.0) -> list[float]:
    """Train Constrained toward TARGET; return p before each step and after the last."""
    model = Constrained()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    history = [model.p.item()]
    for _ in range(steps):
        opt.zero_grad()
        loss = (model.p - TARGET) ** 2
        loss.backward()
        opt.step()
        history.append(model.p.item())
    return history


def main() -> None:
    print(f"Training a probability p toward {TARGET}.\n")
    print("1. self.p = torch.sigmoid(self.raw) in __init__:")
    error = train_transform_once()
    print(f"   step 2 fails: RuntimeError: {error}\n")
    print('2. gw.constrain(self, "p", "unit_interval", init=0.5):')
    history = train_constrained()
    print("   step |      p")
    for step in range(0, len(history), 10):
        print(f"   {step:>4} | {history[step]:.4f}")
    print(f"\np = {history[-1]:.4f} after {STEPS} steps, inside (0, 1) at every step;")
    print("the optimizer updated the unconstrained tensor model.parametrizations.p.original.")


if __name__ == "__main__":
    main()
