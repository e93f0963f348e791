"""A linear layer with weights fake-quantized to a learned step size (quantization-aware training).

Broken: ``torch.round`` has zero derivative, so the full-precision weight gets a gradient of
exactly zero and never moves; only the step size trains. Fix: round with a straight-through
estimator, ``w + (torch.round(w) - w).detach()``.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class QuantizedLinear(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) * 0.1)
        self.step_size = nn.Parameter(torch.tensor(0.05))

    def forward(self, x):
        levels = torch.round(self.weight / self.step_size)  # doctor: zero-gradient
        return F.linear(x, levels * self.step_size)


model = nn.Sequential(QuantizedLinear(16, 32), nn.ReLU(), nn.Linear(32, 2))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
inputs = torch.randn(128, 16)
labels = (inputs.sum(dim=1) > 0).long()

for _ in range(5):
    loss = F.cross_entropy(model(inputs), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

print(f"loss {loss.item():.4f}")
