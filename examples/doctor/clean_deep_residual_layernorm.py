"""Deep pre-norm residual MLP (12 blocks, LayerNorm, GELU), the shape of a transformer's MLP stack.

Clean: the residual path carries the gradient to the first block unchanged; the first and
last layers' gradients stay within an order of magnitude or two.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


model = nn.Sequential(nn.Linear(20, 64), *[Block(64) for _ in range(12)], nn.LayerNorm(64), nn.Linear(64, 5))
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
x = torch.randn(128, 20)
y = torch.randint(0, 5, (128,))

for _ in range(4):
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"loss {loss.item():.4f}")
