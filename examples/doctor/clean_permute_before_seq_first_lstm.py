"""Sensor windows from a DataLoader, batch-first (batch, time, channels), classified by a
sequence-first ``nn.LSTM`` (no ``batch_first``) after ``x.transpose(0, 1)``, reading the
last hidden state ``h[-1]``.

Clean: the transpose puts the time on dim 0 where the LSTM expects it (a permute, not a
view), so each window stays its own sequence. Not batch mixing.
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
        _, (h, _) = self.lstm(windows.transpose(0, 1))  # (time, batch, channels)
        return self.head(h[-1])


windows = torch.randn(128, 30, 6)
activity = torch.randint(0, 5, (128,))
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
