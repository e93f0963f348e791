"""Single-head self-attention over padded sequences, pooled and classified.

Broken: the helper ``zero_padded_keys`` masks the softmax output in place, and softmax's
backward needs that output, so ``backward`` raises. Fix: mask the scores with ``-inf``
before the softmax, or use the out-of-place ``masked_fill``.
"""
# expect-exit: RuntimeError: one of the variables needed for gradient computation has been modified

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers.attention import zero_padded_keys

torch.manual_seed(0)


def train(steps=5):
    dim = 16
    query, key, value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
    head = nn.Linear(dim, 2)
    modules = nn.ModuleList([query, key, value, head])
    optimizer = torch.optim.Adam(modules.parameters(), lr=1e-2)
    sequences = torch.randn(8, 10, dim)
    lengths = torch.randint(3, 11, (8,))
    padding = torch.arange(10) >= lengths.unsqueeze(1)
    labels = (sequences[:, 0, 0] > 0).long()

    for _ in range(steps):
        scores = query(sequences) @ key(sequences).transpose(1, 2) / dim**0.5
        weights = zero_padded_keys(torch.softmax(scores, dim=-1), padding)
        pooled = (weights @ value(sequences)).mean(dim=1)
        loss = F.cross_entropy(head(pooled), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    train()
