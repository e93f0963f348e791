"""A checkpointed residual MLP: the first block with ``use_reentrant=False`` on the input
batch, the later blocks with the reentrant variant on hidden states that require grad.
Every block gets its gradient.
"""

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

torch.manual_seed(0)


class Residual(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.ff = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU())

    def forward(self, x):
        return x + self.ff(x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(12, 32)
        self.blocks = nn.ModuleList(Residual(32) for _ in range(3))
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        h = checkpoint(self.stem, x, use_reentrant=False)
        for block in self.blocks:
            h = checkpoint(block, h, use_reentrant=True)
        return self.head(h)


model = Net()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
x = torch.randn(64, 12)
y = (x[:, 0] > 0).long()
for _step in range(4):
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"loss {loss.item():.4f}")
