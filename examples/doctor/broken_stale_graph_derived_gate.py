"""A gated residual block whose gate is ``sigmoid`` of a raw parameter.

Broken: the gate is computed once in ``__init__``, so every step reuses the same graph and
the second ``backward`` fails. Fix: compute ``torch.sigmoid(self.raw_gate)`` inside ``forward``
(or use ``torch.nn.utils.parametrize``).
"""
# expect-exit: RuntimeError: Trying to backward through the graph a second time

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class GatedResidual(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.layer = nn.Linear(dim, dim)
        self.raw_gate = nn.Parameter(torch.zeros(dim))
        self.gate = torch.sigmoid(self.raw_gate)  # doctor: stale-graph

    def forward(self, x):
        return x + self.gate * torch.tanh(self.layer(x))


model = nn.Sequential(GatedResidual(8), nn.Linear(8, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
inputs = torch.randn(64, 8)
targets = inputs.sum(dim=1, keepdim=True)

for _ in range(5):
    loss = F.mse_loss(model(inputs), targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

print(f"mse {loss.item():.4f}")
