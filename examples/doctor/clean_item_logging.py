"""A regression loop that logs the running loss with ``.item()`` and ``.tolist()``.

Clean: the Python numbers are only logged; the loss itself keeps its graph.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


def train(steps=5):
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    inputs = torch.randn(64, 4)
    targets = inputs[:, :2] * 2.0 - 1.0
    history = []
    for step in range(steps):
        per_output = F.mse_loss(model(inputs), targets, reduction="none").mean(dim=0)
        loss = per_output.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append({"step": step, "loss": loss.item(), "per_output": per_output.tolist()})
    return history


if __name__ == "__main__":
    history = train()
    print(f"first {history[0]['loss']:.4f}  last {history[-1]['loss']:.4f}")
