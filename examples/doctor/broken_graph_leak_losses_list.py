"""A GRU sequence regressor that keeps the per-batch losses to plot a training curve.

Broken: ``history.append(loss)`` keeps every loss tensor with its autograd graph (the
GRU's activations included), so memory grows with every step. Fix:
``history.append(loss.item())``.
"""

import torch
from torch import nn

torch.manual_seed(0)


class SeqRegressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(4, 16, batch_first=True)
        self.out = nn.Linear(16, 1)

    def forward(self, x):
        h, _ = self.gru(x)
        return self.out(h[:, -1]).squeeze(-1)


def train(steps: int = 6) -> list:
    model = SeqRegressor()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    history = []
    for _step in range(steps):
        x = torch.randn(16, 10, 4)
        y = x[:, :, 0].sum(1)
        loss = nn.functional.smooth_l1_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss)  # doctor: graph-leak
    return history


if __name__ == "__main__":
    curve = train()
    print(f"first loss {curve[0].item():.4f}, last {curve[-1].item():.4f}")
