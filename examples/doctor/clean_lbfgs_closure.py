"""Fitting a sine wave with ``torch.optim.LBFGS``, like PyTorch's time-sequence-prediction example.

Clean: LBFGS calls the closure several times per ``optimizer.step(closure)``; the closure
zeroes the gradients first, computes the loss, calls ``loss.backward()`` and returns the
loss, so every evaluation starts from fresh gradients.
"""

import torch
from torch import nn

torch.manual_seed(0)


class SineModel(nn.Module):
    def __init__(self, hidden=20):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.linear = nn.Linear(hidden, 1)

    def forward(self, t):
        return self.linear(self.net(t))


t = torch.linspace(-3, 3, 100).unsqueeze(1)
target = torch.sin(t) + 0.05 * torch.randn_like(t)
model = SineModel()
criterion = nn.MSELoss()
optimizer = torch.optim.LBFGS(model.parameters(), lr=0.8, max_iter=10)

for _ in range(3):

    def closure():
        optimizer.zero_grad()
        loss = criterion(model(t), target)
        loss.backward()
        return loss

    loss = optimizer.step(closure)

print(f"loss {loss.item():.5f}")
