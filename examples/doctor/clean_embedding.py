"""A bag-of-words sentiment model: ``nn.Embedding`` rows averaged per sentence, then a linear head.

Clean: integer token ids index the embedding table, which trains through the lookup.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class BagOfWords(nn.Module):
    def __init__(self, vocab_size=100, dim=16):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim)
        self.head = nn.Linear(dim, 2)

    def forward(self, tokens):
        return self.head(self.embedding(tokens).mean(dim=1))


tokens = torch.randint(0, 100, (64, 10))
labels = (tokens < 50).sum(dim=1).gt(5).long()
model = BagOfWords()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

for _ in range(5):
    loss = F.cross_entropy(model(tokens), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

print(f"loss {loss.item():.4f}")
