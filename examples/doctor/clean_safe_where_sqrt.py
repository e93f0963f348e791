"""Signed square-root link written with the safe-where pattern.

Clean: the argument of each ``sqrt`` is made harmless where its branch is not used, so
both the forward and the backward stay finite.
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
    positive = z > 0
    safe = torch.where(positive, z, -z).clamp_min(1e-12)
    pred = torch.where(positive, torch.sqrt(safe), -torch.sqrt(safe))
    loss = ((pred - y) ** 2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"loss {loss.item():.4f}")
