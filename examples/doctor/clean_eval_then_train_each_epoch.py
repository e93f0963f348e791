"""CNN with Dropout and BatchNorm: validation under ``model.eval()`` after every epoch and
``model.train()`` at the start of the next one; a frozen EMA copy kept in eval mode.

Clean: every optimizer step runs in train mode; the EMA model, in eval mode, is in no
optimizer.
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)

model = nn.Sequential(
    nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.2), nn.Flatten(), nn.Linear(8 * 8 * 8, 4)
)
ema = copy.deepcopy(model).eval().requires_grad_(False)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 4, (32,))
for _epoch in range(3):
    model.train()
    for start in range(0, 32, 16):
        loss = F.cross_entropy(model(x[start : start + 16]), y[start : start + 16])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters(), strict=True):
                e.lerp_(p, 0.1)
    model.eval()
    with torch.no_grad():
        accuracy = (ema(x).argmax(1) == y).float().mean().item()
print(f"accuracy {accuracy:.2f}")
