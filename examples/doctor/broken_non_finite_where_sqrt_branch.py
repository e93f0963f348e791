"""Regression with a signed square-root link, guarded by ``torch.where``.

Broken: ``torch.where(z > 0, torch.sqrt(z), -torch.sqrt(-z))`` computes both branches:
``sqrt`` of the negative entries is NaN, torch.where hides it in the forward (the loss is
finite), but the masked-out branch still gets a zero gradient and 0 * NaN is NaN, so every
weight's gradient is NaN. Fix: the safe-where pattern (clamp inside each branch).
"""

import torch
from torch import nn

torch.manual_seed(0)

model = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
x = torch.randn(200, 4)
y = torch.sign(x[:, :1]) * x[:, :1].abs().sqrt()

for _ in range(4):
    z = model(x)
    pred = torch.where(z > 0, torch.sqrt(z), -torch.sqrt(-z))  # doctor: non-finite
    loss = ((pred - y) ** 2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"loss {loss.item():.4f}")
