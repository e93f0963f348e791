"""A small causal transformer language model on synthetic token sequences, with
``nn.TransformerEncoder(..., batch_first=True)``, a learned position embedding, a causal
mask and the logits flattened to ``(B * T, V)`` for the loss.

Clean: attention mixes the positions of a sequence, never the sequences of a batch; the
``view(-1, vocab)`` merges the batch and time axes for the loss and keeps each sample's
rows together. Not batch mixing.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class TinyLM(nn.Module):
    def __init__(self, vocab=40, width=32, context=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.zeros(1, context, width))
        layer = nn.TransformerEncoderLayer(width, 4, 64, dropout=0.1, batch_first=True)
        self.blocks = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens):
        t = tokens.shape[1]
        h = self.embed(tokens) + self.position[:, :t]
        mask = nn.Transformer.generate_square_subsequent_mask(t)
        h = self.blocks(h, mask=mask, is_causal=True)
        return self.head(h).view(-1, self.head.out_features)


def train(steps=4):
    corpus = torch.randint(0, 40, (64, 17))
    model = TinyLM()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(steps):
        batch = corpus[step * 16 : (step + 1) * 16]
        loss = F.cross_entropy(model(batch[:, :-1]), batch[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


if __name__ == "__main__":
    print(f"final loss {train():.3f}")
