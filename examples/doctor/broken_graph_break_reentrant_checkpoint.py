"""A deep MLP whose blocks are checkpointed to save activation memory.

Broken: ``checkpoint(block, x, use_reentrant=True)`` is applied to the first block directly on
the input batch, which does not require grad; the reentrant variant then runs the block
under no_grad, so no block gets a gradient (only the head trains); the warning PyTorch gives
is silenced. Fix: ``use_reentrant=False``.
"""

import warnings

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

warnings.filterwarnings("ignore", message="None of the inputs have requires_grad")
torch.manual_seed(0)


class CheckpointedMLP(nn.Module):
    def __init__(self, width: int = 64, depth: int = 4):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(16 if i == 0 else width, width), nn.GELU()) for i in range(depth)
        )
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=True)  # doctor: graph-break
        return self.head(x)


model = CheckpointedMLP()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
x = torch.randn(128, 16)
y = x[:, :1] * 2.0

for _step in range(4):
    loss = nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"loss {loss.item():.4f}")
