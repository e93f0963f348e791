"""Self-attention over padded sequences, padding masked with ``-inf`` before the softmax.

Clean: every query keeps at least one unmasked key, so the softmax is finite; the
``-inf`` written by ``masked_fill`` is deliberate and never reaches the loss.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class Attention(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, 2)

    def forward(self, x, pad):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = q @ k.transpose(1, 2) / q.shape[-1] ** 0.5
        scores = scores.masked_fill(pad[:, None, :], float("-inf"))
        h = F.softmax(scores, dim=-1) @ v
        keep = (~pad).float()[..., None]
        return self.out((h * keep).sum(1) / keep.sum(1))


model = Attention()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
x = torch.randn(8, 10, 16)
lengths = torch.randint(3, 11, (8,))
pad = torch.arange(10)[None] >= lengths[:, None]
y = torch.randint(0, 2, (8,))

for _ in range(4):
    loss = F.cross_entropy(model(x, pad), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"loss {loss.item():.4f}")
