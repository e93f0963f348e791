"""Eight-layer CNN with BatchNorm and ReLU, trained with a tiny learning rate.

Clean: batch normalisation keeps each layer's gradient healthy; the tiny learning rate makes
the updates small, not the gradients.
"""

import itertools

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)

blocks = []
channels = [3, 16, 16, 32, 32, 32, 32, 32, 32]
for c_in, c_out in itertools.pairwise(channels):
    blocks += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
model = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
x = torch.randn(16, 3, 16, 16)
y = torch.randint(0, 10, (16,))

for _ in range(3):
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"loss {loss.item():.4f}")
