"""Regression that logs a per-feature correlation which is NaN for a constant feature.

Clean: the correlation of the constant column is 0/0 = NaN, but it is only logged
(computed under ``torch.no_grad()``) and never reaches the loss.
"""

import torch
from torch import nn

torch.manual_seed(0)

x = torch.randn(128, 4)
x[:, 2] = 0.5  # a constant feature
y = x[:, :1] * 2 - x[:, 1:2]
model = nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
history = []

for _ in range(4):
    pred = model(x)
    loss = nn.functional.mse_loss(pred, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        xc, pc = x - x.mean(0), pred - pred.mean()
        corr = (xc * pc).mean(0) / (xc.std(0) * pc.std())
        history.append(corr.tolist())
print(f"loss {loss.item():.4f}, correlations {history[-1]}")
