"""A bag-of-embeddings text classifier that pools token embeddings with a helper.

Broken: ``helpers.pooling.masked_mean`` returns a detached tensor, so the embedding and
the projection never train; only the head does. Fix: drop the ``.detach()`` in the helper.
"""

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers.pooling import masked_mean

torch.manual_seed(0)


class TextClassifier(nn.Module):
    def __init__(self, vocab_size=50, dim=16, num_classes=3):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.projection = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens):
        hidden = torch.tanh(self.projection(self.embedding(tokens)))
        return self.head(masked_mean(hidden, tokens != 0))


tokens = torch.randint(0, 50, (32, 12))
labels = tokens[:, 0] % 3
model = TextClassifier()
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

for _ in range(5):
    loss = criterion(model(tokens), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

print(f"loss {loss.item():.4f}")
