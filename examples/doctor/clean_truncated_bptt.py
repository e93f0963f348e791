"""A character-level GRU trained with truncated backpropagation through time.

Clean: the hidden state is carried from chunk to chunk with ``detach()``, which cuts the
graph between chunks on purpose.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class CharModel(nn.Module):
    def __init__(self, vocab_size=12, dim=16):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, tokens, hidden=None):
        output, hidden = self.gru(self.embedding(tokens), hidden)
        return self.head(output), hidden


def train(chunks=4, chunk_length=10):
    text = torch.randint(0, 12, (1, chunks * chunk_length + 1))
    model = CharModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    hidden = None
    for start in range(0, chunks * chunk_length, chunk_length):
        inputs = text[:, start : start + chunk_length]
        targets = text[:, start + 1 : start + chunk_length + 1]
        logits, hidden = model(inputs, hidden)
        hidden = hidden.detach()
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss


if __name__ == "__main__":
    print(f"loss {train().item():.4f}")
