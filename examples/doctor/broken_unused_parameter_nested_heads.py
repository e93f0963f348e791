"""A small GPT-style language model, its attention heads in a ``ModuleList`` in each block.

Broken: a typo in ``Head.forward`` computes the keys with ``self.query``, so every head's
``self.key`` is never called. Fix: ``k = self.key(x)``.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
vocab, n_embd, block_size, n_head = 20, 32, 16, 4


class Head(nn.Module):
    def __init__(self, head_size):
        super().__init__()
        self.key = nn.Linear(n_embd, head_size, bias=False)  # doctor: unused-parameter
        self.query = nn.Linear(n_embd, head_size, bias=False)
        self.value = nn.Linear(n_embd, head_size, bias=False)

    def forward(self, x):
        k, q = self.query(x), self.query(x)
        weights = ((q @ k.transpose(-2, -1)) * k.shape[-1] ** -0.5).softmax(-1)
        return weights @ self.value(x)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.heads = nn.ModuleList([Head(n_embd // n_head) for _ in range(n_head)])
        self.ln = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))

    def forward(self, x):
        x = x + torch.cat([h(self.ln(x)) for h in self.heads], -1)
        return x + self.mlp(x)


class GPT(nn.Module):
    def __init__(self, n_layer=2):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, n_embd), nn.Embedding(block_size, n_embd)
        self.blocks = nn.Sequential(*[Block() for _ in range(n_layer)])
        self.head = nn.Linear(n_embd, vocab)

    def forward(self, idx):
        return self.head(self.blocks(self.tok(idx) + self.pos(torch.arange(idx.shape[1]))))


data, model = torch.randint(0, vocab, (2000,)), GPT()
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
for _ in range(6):
    ix = torch.randint(0, len(data) - block_size - 1, (8,))
    x = torch.stack([data[i : i + block_size] for i in ix])
    y = torch.stack([data[i + 1 : i + block_size + 1] for i in ix])
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
