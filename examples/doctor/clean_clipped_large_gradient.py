"""LSTM forecaster of a large-scale series, with gradient clipping.

Clean: the targets are in the thousands, so the gradient norm is large (about 1e4) from the
first step, but it is stable, ``clip_grad_norm_`` bounds every update and the loss goes
down: a large, handled gradient, not an exploding one.
"""

import torch
from torch import nn

torch.manual_seed(0)


class Forecaster(nn.Module):
    def __init__(self, hidden=32):
        super().__init__()
        self.lstm = nn.LSTM(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


t = torch.arange(64 * 24, dtype=torch.float32).reshape(64, 24, 1)
series = 3000.0 + 500.0 * torch.sin(t / 7.0)
x, y = series[:, :-1] / 1000.0, series[:, -1, 0]
model = Forecaster()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
for _step in range(6):
    loss = nn.functional.mse_loss(model(x).squeeze(-1), y)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    optimizer.step()
print(f"loss {loss.item():.1f}")
