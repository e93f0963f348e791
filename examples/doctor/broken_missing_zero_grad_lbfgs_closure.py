"""Fitting a cubic curve with ``torch.optim.LBFGS`` and a closure.

Broken: the closure never zeroes the gradients, and LBFGS calls it several times per
``optimizer.step(closure)``, so each evaluation returns the sum of all the gradients so
far and the line search works on garbage. Fix: call ``optimizer.zero_grad()`` at the start
of the closure.
"""

import torch
from torch import nn

torch.manual_seed(0)

x = torch.linspace(-2, 2, 80).unsqueeze(1)
y = x**3 - x + 0.1 * torch.randn_like(x)

model = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1))
criterion = nn.MSELoss()
optimizer = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5)


def closure():
    loss = criterion(model(x), y)
    loss.backward()
    return loss


for _ in range(3):
    loss = optimizer.step(closure)  # doctor: missing-zero-grad

print(f"loss {loss.item():.4f}")
