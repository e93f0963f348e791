"""A CRNN reads synthetic text-line images: convolutional features (B, C, H, W) become a
sequence of W column vectors for a sequence-first ``nn.LSTM`` (T, B, C * H).

Broken: the sequence is made with ``features.view(w, b, c * h)`` where a permute was meant.
A view keeps the memory order, so every "time step" of every "sample" holds pieces of
several images, and each prediction depends on the other images of its batch. Training
runs and the loss still goes down a little. Fix:
``seq = features.permute(3, 0, 1, 2).reshape(w, b, c * h)``.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)


class CRNN(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2))
        self.rnn = nn.LSTM(16 * 8, 64)
        self.head = nn.Linear(64, classes)

    def forward(self, images):
        features = self.conv(images)
        b, c, h, w = features.shape
        seq = features.view(w, b, c * h)  # doctor: batch-mixing
        out, _ = self.rnn(seq)
        return self.head(out.mean(0))


images = torch.randn(192, 1, 16, 48)
labels = torch.randint(0, 10, (192,))
loader = DataLoader(TensorDataset(images, labels), batch_size=32, shuffle=True)
model = CRNN()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
for _ in range(2):
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
print(f"final loss {loss.item():.3f}")
