"""Metric learning on synthetic clusters: an embedding network trained with a contrastive
loss on ``z @ z.T`` similarities, a hand-written pairwise-distance triplet term
(``z[:, None] - z[None]``), a prototype loss on ``torch.cdist`` and a per-feature weighted
reconstruction: broadcasts on purpose, none of them a broadcast loss.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)

centers = torch.randn(4, 10) * 3
labels = torch.arange(4).repeat_interleave(16)
points = centers[labels] + torch.randn(64, 10)

embed = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 8))
decode = nn.Linear(8, 10)
prototypes = nn.Parameter(torch.randn(4, 8))
feature_weight = torch.linspace(0.5, 1.5, 10)
optimizer = torch.optim.Adam([*embed.parameters(), *decode.parameters(), prototypes], lr=1e-3)

for _step in range(4):
    z = F.normalize(embed(points), dim=1)
    sim = z @ z.T / 0.1
    same = (labels[:, None] == labels[None]).float()
    contrastive = -(F.log_softmax(sim, dim=1) * same).sum(1).div(same.sum(1)).mean()
    dist = (z[:, None] - z[None]).pow(2).sum(-1)
    triplet = F.relu(1.0 + (dist * same).max(1).values - (dist + 1e3 * same).min(1).values).mean()
    proto = F.cross_entropy(-torch.cdist(z, prototypes), labels)
    recon = (feature_weight * (decode(z) - points) ** 2).mean()
    centred = z - z.mean(0, keepdim=True)
    spread = centred.pow(2).mean()
    loss = contrastive + triplet + proto + 0.1 * recon - 0.01 * spread
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"loss {loss.item():.3f}")
