"""A product-review classifier fusing a bag-of-words text encoder with numeric features.

Broken: the token embeddings (batch, tokens, dim) are averaged over dim 0, the batch,
instead of dim 1, the tokens, so the text features have one row per token position and
``torch.cat`` with the (batch, 8) numeric features fails. Fix: ``.mean(dim=1)``.
"""
# expect-exit: RuntimeError: Sizes of tensors must match except in dimension 1

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class Fusion(nn.Module):
    def __init__(self, vocab=500, dim=32):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.numeric = nn.Linear(6, 8)
        self.head = nn.Linear(dim + 8, 2)

    def forward(self, tokens, numbers):
        text = self.embed(tokens).mean(dim=0)
        extra = F.relu(self.numeric(numbers))
        both = torch.cat([text, extra], dim=1)  # doctor: shape-mismatch
        return self.head(both)


model = Fusion()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
tokens = torch.randint(0, 500, (32, 20))
numbers = torch.randn(32, 6)
labels = torch.randint(0, 2, (32,))

for _ in range(5):
    loss = F.cross_entropy(model(tokens, numbers), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

print(f"loss {loss.item():.4f}")
