"""A character-level GRU language model trained on random token sequences.

Broken: the logits are (batch, time, vocab) but ``nn.CrossEntropyLoss`` takes the classes
in dim 1, so it reads 15 classes over 40 positions and asks for a (16, 40) target. Fix:
``criterion(logits.reshape(-1, vocab), targets.reshape(-1))`` (or ``logits.transpose(1, 2)``).
"""
# expect-exit: RuntimeError: Expected target size [16, 40], got [16, 15]

import torch
from torch import nn

torch.manual_seed(0)
vocab, hidden = 40, 64


class CharLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(vocab, 32)
        self.gru = nn.GRU(32, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, tokens):
        h, _ = self.gru(self.embed(tokens))
        return self.out(h)


model = CharLM()
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
text = torch.randint(0, vocab, (16, 16))

for _ in range(5):
    inputs, targets = text[:, :-1], text[:, 1:]
    logits = model(inputs)
    loss = criterion(logits, targets)  # doctor: shape-mismatch
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

print(f"loss {loss.item():.4f}")
