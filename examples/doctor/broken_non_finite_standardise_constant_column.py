"""Tabular classifier that standardises each feature column on the fly.

Broken: one column is constant (a sensor stuck at 1.0), its std is 0, and
``(x - mean) / std`` is 0/0 = NaN there; the loss is NaN from the first step. Fix: add an
eps to the std (``x.std(0) + 1e-8``) or drop constant columns.
"""

import torch
import torch.nn.functional as F
from torch import nn


def standardise(x):
    return (x - x.mean(0)) / x.std(0)  # doctor: non-finite


def train():
    torch.manual_seed(0)
    x = torch.randn(300, 5)
    x[:, 3] = 1.0  # a stuck sensor
    y = (x[:, 0] + x[:, 1] > 0).long()
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(4):
        loss = F.cross_entropy(model(standardise(x)), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


if __name__ == "__main__":
    print(train())
