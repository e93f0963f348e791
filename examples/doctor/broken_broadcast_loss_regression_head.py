"""House-price regression with an MLP and a hand-written mean squared error.

Broken: the head has ``out_features=1`` and returns ``(batch, 1)`` while the prices are
``(batch,)``: ``pred - prices`` broadcasts to ``(batch, batch)`` and the model learns the mean
price. Fix: ``pred.squeeze(-1) - prices``.
"""

import torch
from torch import nn

torch.manual_seed(0)

features = torch.randn(512, 8)
prices = features @ torch.randn(8) + 0.1 * torch.randn(512)
model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)


def mse(pred, target):
    return ((pred - target) ** 2).mean()  # doctor: broadcast-loss


for epoch in range(3):
    for i in range(0, 512, 128):
        pred = model(features[i : i + 128])
        loss = mse(pred, prices[i : i + 128])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"epoch {epoch} loss {loss.item():.3f}")
