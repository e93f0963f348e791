"""A one-layer self-attention classifier over short synthetic sequences.

Broken: a typo in ``forward`` computes the keys with ``self.query`` instead of
``self.key``, so ``self.key`` is never called and its weights never get a gradient.
Fix: ``k = self.key(x)``.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class SelfAttention(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)  # doctor: unused-parameter
        self.value = nn.Linear(dim, dim)

    def forward(self, x):
        q = self.query(x)
        k = self.query(x)
        v = self.value(x)
        weights = F.softmax(q @ k.transpose(1, 2) / math.sqrt(x.size(-1)), dim=-1)
        return weights @ v


def train(steps=5, dim=16, num_classes=3):
    attention = SelfAttention(dim)
    classifier = nn.Linear(dim, num_classes)
    params = [*attention.parameters(), *classifier.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    tokens = torch.randn(32, 10, dim)
    labels = tokens[:, 0, :num_classes].argmax(dim=1)
    for _ in range(steps):
        logits = classifier(attention(tokens).mean(dim=1))
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss


if __name__ == "__main__":
    print(f"loss {train().item():.4f}")
