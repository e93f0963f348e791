"""A classifier whose hidden features are post-processed in NumPy between encoder and head.

Broken: ``h.detach().cpu().numpy()`` leaves autograd and ``torch.from_numpy`` re-enters it
as a new leaf, so the encoder gets no gradient; only the head trains. Fix: do the
arithmetic in torch, ``h = torch.tanh(h) * 2``.
"""

import numpy as np
import torch
from torch import nn

torch.manual_seed(0)


class Classifier(nn.Module):
    def __init__(self, in_features=12, hidden=32, num_classes=3):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        h = self.encoder(x)
        a = h.detach().cpu().numpy()  # doctor: graph-break
        a = np.tanh(a) * 2
        h = torch.from_numpy(a)
        return self.head(h)


model = Classifier()
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
inputs = torch.randn(96, 12)
labels = inputs[:, :3].argmax(dim=1)

for _ in range(5):
    loss = criterion(model(inputs), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

print(f"loss {loss.item():.4f}")
