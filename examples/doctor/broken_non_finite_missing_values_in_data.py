"""Regression on records read from a list of rows, one of which has a missing value.

Broken: the missing value was parsed as ``float('nan')`` and the rows go straight into
``torch.tensor``; the NaN reaches the loss through the first matrix product and the loss
is NaN. Fix: drop or impute the rows with ``torch.isnan(x).any(1)`` before training.
"""

import math
import random

import torch
from torch import nn

random.seed(0)
torch.manual_seed(0)

rows = [[random.gauss(0, 1) for _ in range(4)] for _ in range(256)]
rows[41][2] = math.nan  # a missing reading in the source file
targets = [sum(r) if not any(math.isnan(v) for v in r) else 0.0 for r in rows]

x = torch.tensor(rows)  # doctor: non-finite
y = torch.tensor(targets)[:, None]
model = nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)

for _ in range(3):
    loss = nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"loss {loss.item():.4f}")
