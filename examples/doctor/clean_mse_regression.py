"""Nonlinear regression with ``nn.MSELoss`` and a model that predicts one value per input.

Clean: float predictions of the same shape as the targets go into the regression loss.
"""

import torch
from torch import nn

torch.manual_seed(0)

model = nn.Sequential(nn.Linear(3, 32), nn.Tanh(), nn.Linear(32, 1))
criterion = nn.MSELoss()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
inputs = torch.rand(256, 3) * 4 - 2
targets = torch.sin(inputs[:, :1]) + 0.5 * inputs[:, 1:2] ** 2

for _ in range(5):
    loss = criterion(model(inputs), targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

print(f"mse {loss.item():.4f}")
