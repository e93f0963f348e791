"""A learning-rate sweep: one short training run per candidate rate, keep the best.

Clean: each trial builds a fresh model and a fresh optimizer for it, so every parameter
that receives a gradient belongs to the optimizer that steps it; earlier trials' models
are dropped.
"""

import torch
from torch import nn

torch.manual_seed(0)


def make_model():
    return nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 1))


def run_trial(lr, inputs, targets, steps=2):
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    criterion = nn.MSELoss()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = criterion(model(inputs), targets)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return criterion(model(inputs), targets).item()


if __name__ == "__main__":
    inputs = torch.randn(128, 3)
    targets = (inputs**2).sum(dim=1, keepdim=True) - 1.0
    best_lr, best_loss = None, float("inf")
    for lr in (1e-3, 1e-2, 1e-1):
        final_loss = run_trial(lr, inputs, targets)
        if final_loss < best_loss:
            best_lr, best_loss = lr, final_loss
    print(f"best lr {best_lr:g}  loss {best_loss:.4f}")
