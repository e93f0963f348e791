"""Metric learning with a hand-written pairwise Euclidean distance (a triplet-style loss).

Broken: ``((a[:, None] - a[None]) ** 2).sum(-1).sqrt()`` includes each point's distance to
itself, exactly 0, where the derivative of sqrt is infinite; the loss is finite but the
encoder's gradients are NaN. Fix: ``torch.cdist`` / ``torch.linalg.vector_norm``, or
``clamp_min(1e-12)`` before the sqrt.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)

encoder = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-3)
x = torch.randn(64, 16)
labels = torch.randint(0, 4, (64,))
same = labels[:, None] == labels[None]

for _ in range(4):
    emb = encoder(x)
    dist = ((emb[:, None] - emb[None]) ** 2).sum(-1).sqrt()  # doctor: non-finite
    loss = dist[same].mean() + F.relu(1.0 - dist[~same]).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"loss {loss.item():.4f}")
