"""A regression model: a feature encoder followed by a linear head.

Broken: the encoder output is detached, and ``h.requires_grad_()`` on the next line makes
``h`` a fresh leaf that merely *looks* trainable; the encoder still gets no gradient.
Fix: delete both the ``.detach()`` and the ``requires_grad_()`` call.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class Regressor(nn.Module):
    def __init__(self, in_features=8, hidden=32):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.encoder(x).detach()  # doctor: graph-break
        h.requires_grad_()  # doctor: requires-grad-bandaid
        return self.head(h).squeeze(-1)


model = Regressor()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
inputs = torch.randn(128, 8)
targets = inputs[:, 0] * 2 - inputs[:, 1] ** 2

for _ in range(5):
    optimizer.zero_grad()
    loss = F.mse_loss(model(inputs), targets)
    loss.backward()
    optimizer.step()

print(f"mse {loss.item():.4f}")
