"""A stateful LSTM forecaster that keeps its state on the module between windows of
parallel streams.

Broken: ``forward`` stores ``self.state`` with its history, so the next window's backward
goes back through the previous window's freed graph. Fix: store
``tuple(s.detach() for s in state)``.
"""
# expect-exit: RuntimeError: Trying to backward through the graph a second time

import math

import torch
from torch import nn


class StatefulLSTM(nn.Module):
    def __init__(self, hidden=32):
        super().__init__()
        self.lstm = nn.LSTM(1, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, 1)
        self.state = None

    def forward(self, x):
        out, self.state = self.lstm(x, self.state)  # doctor: stale-graph
        return self.fc(out)


torch.manual_seed(0)
t = torch.arange(0, 800, dtype=torch.float32)
streams = (torch.sin(t * 2 * math.pi / 50) + 0.1 * torch.randn_like(t)).view(4, 200, 1)
model = StatefulLSTM()
loss_fn = nn.MSELoss()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
window = 20
for start in range(0, 200 - window - 1, window):
    x = streams[:, start : start + window]
    y = streams[:, start + 1 : start + window + 1]
    optimizer.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
