"""Activity recognition from synthetic sensor windows: a DataLoader yields batch-first
windows (batch, time, channels) and an ``nn.LSTM`` classifies the last time step.

Broken: the LSTM is built without ``batch_first=True``, so it takes dim 0 as the time: it
runs along the batch, carrying its state from one window to the next, and treats the 50
time steps as 50 sequences. Window i's prediction depends on windows 0..i-1 of its batch.
Fix: ``nn.LSTM(6, 32, batch_first=True)``, or ``self.lstm(x.transpose(0, 1))``.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)


class ActivityNet(nn.Module):
    def __init__(self, channels=6, hidden=32, classes=5):
        super().__init__()
        self.lstm = nn.LSTM(channels, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, windows):
        out, _ = self.lstm(windows)  # doctor: batch-mixing
        return self.head(out[:, -1])


windows = torch.randn(160, 50, 6)
activity = torch.randint(0, 5, (160,))
windows[:, :, 0] += activity[:, None].float()
loader = DataLoader(TensorDataset(windows, activity), batch_size=32, shuffle=True)
model = ActivityNet()
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
for _ in range(2):
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
print(f"final loss {loss.item():.3f}")
