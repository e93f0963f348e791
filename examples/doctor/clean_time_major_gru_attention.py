"""A sequence-first GRU on time-major data (time, batch, features), as the PyTorch RNN
examples lay it out, with attention pooling over time: ``softmax(scores, dim=0)`` and a
sum over dim 0.

Clean: here dim 0 is the time, not the batch, so the GRU running along it and the softmax
over it mix time steps of one sequence, never sequences of the batch. Not batch mixing.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class AttentiveGRU(nn.Module):
    def __init__(self, features=8, hidden=32, classes=3):
        super().__init__()
        self.gru = nn.GRU(features, hidden)
        self.score = nn.Linear(hidden, 1)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.gru(x)  # (time, batch, hidden)
        weights = torch.softmax(self.score(out), dim=0)  # over the time steps
        return self.head((weights * out).sum(0))


def train(steps=5, time=25, batch=32):
    model = AttentiveGRU()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        x = torch.randn(time, batch, 8)
        y = (x[:, :, 0].mean(0) > 0).long() + (x[:, :, 1].mean(0) > 0).long()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


if __name__ == "__main__":
    print(f"final loss {train():.3f}")
