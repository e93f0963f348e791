"""A regression model built from a custom low-rank linear layer.

Broken: ``LowRankLinear.bias`` is declared as a parameter but ``forward`` forgets to add
it, so it never trains. Fix: return ``x @ self.u @ self.v + self.bias``.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class LowRankLinear(nn.Module):
    def __init__(self, in_features, out_features, rank):
        super().__init__()
        self.u = nn.Parameter(torch.randn(in_features, rank) / in_features**0.5)
        self.v = nn.Parameter(torch.randn(rank, out_features) / rank**0.5)
        self.bias = nn.Parameter(torch.zeros(out_features))  # doctor: unused-parameter

    def forward(self, x):
        return x @ self.u @ self.v


def train(steps=5):
    inputs = torch.randn(256, 12)
    targets = inputs[:, :2].sum(dim=1, keepdim=True) + 3.0
    model = LowRankLinear(12, 1, rank=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = F.mse_loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss


if __name__ == "__main__":
    print(f"mse {train().item():.4f}")
