"""Deep MLP classifier with a sigmoid after every layer (the classic 1990s recipe).

Broken: each sigmoid multiplies the backward signal by at most 0.25, so through ten of
them the first layers' gradients are many orders of magnitude below the last layer's and
the first layers do not learn. Fix: ReLU/GELU, normalisation, residual connections.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)

layers = [nn.Linear(16, 64), nn.Sigmoid()]  # doctor: vanishing-gradient
for _ in range(9):
    layers += [nn.Linear(64, 64), nn.Sigmoid()]
model = nn.Sequential(*layers, nn.Linear(64, 3))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
x = torch.randn(256, 16)
y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()

for _ in range(5):
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"loss {loss.item():.4f}")
