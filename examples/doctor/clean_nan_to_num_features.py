"""Classifier on features with a few missing values replaced by ``torch.nan_to_num``.

Clean: the NaN entries are data (no gradient flows into them) and ``nan_to_num`` makes them
0 before the model; the loss and its gradients are finite.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)

raw = torch.randn(200, 6)
raw[torch.rand(200, 6) < 0.05] = float("nan")  # missing readings
y = (raw.nan_to_num(0.0)[:, 0] > 0).long()
model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

for _ in range(4):
    x = torch.nan_to_num(raw, nan=0.0)
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"loss {loss.item():.4f}")
