"""Linear regression of incomes (targets around 50,000) with Adam.

Clean: the squared loss is about 2.5e9 and its gradient about 1e5 from the first step, but
the loss descends step after step and Adam's updates stay small: a loss of large scale in
steady descent, not an explosion.
"""

import torch
from torch import nn

torch.manual_seed(0)

x = torch.randn(1024, 6)
income = 50_000.0 + 8_000.0 * x[:, :3].sum(1, keepdim=True) + 1_000.0 * torch.randn(1024, 1)
model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 1))
optimizer = torch.optim.Adam(model.parameters(), lr=0.5)
for _step in range(6):
    loss = nn.functional.mse_loss(model(x), income)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"loss {loss.item():.4g}")
