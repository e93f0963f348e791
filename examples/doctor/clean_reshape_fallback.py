"""Multi-head self-attention whose head-merging helper tries ``view`` first and falls back
to ``reshape`` when the tensor is not contiguous (after ``transpose``).

Clean: the view raises a shape error that the helper catches and handles; training goes
on normally, so there is no crash to explain.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


def merge_heads(x, batch, time, dim):
    try:
        return x.view(batch, time, dim)
    except RuntimeError:  # a transposed tensor: view cannot merge its dims without a copy
        return x.reshape(batch, time, dim)


class SelfAttention(nn.Module):
    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5, dim=-1)
        out = weights @ v  # (batch, heads, time, head_dim)
        return self.proj(merge_heads(out.transpose(1, 2), b, t, d))


model = nn.Sequential(SelfAttention(), nn.Flatten(), nn.Linear(8 * 32, 3))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
x, y = torch.randn(16, 8, 32), torch.randint(0, 3, (16,))

for _ in range(5):
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

print(f"loss {loss.item():.4f}")
