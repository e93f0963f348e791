"""A ranking model scored item by item, with the scores gathered into a Python list.

Broken: ``.tolist()`` turns the scores into floats and ``torch.tensor`` re-wraps them with
no history; ``loss.requires_grad = True`` hides the resulting error, so the scorer never
trains. Fix: keep the scores as a tensor (``scores = scorer(items).squeeze(-1)``) and
delete the band-aid.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)

scorer = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
optimizer = torch.optim.SGD(scorer.parameters(), lr=0.1)
items = torch.randn(40, 8)
relevance = items[:, 0] - items[:, 3]

for _ in range(5):
    raw_scores = scorer(items).squeeze(-1).tolist()  # doctor: graph-break
    scores = torch.tensor(raw_scores)
    loss = F.mse_loss(scores, relevance)
    loss.requires_grad = True  # doctor: requires-grad-bandaid
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

print(f"loss {loss.item():.4f}")
