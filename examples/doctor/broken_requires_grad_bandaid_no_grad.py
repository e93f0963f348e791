"""A house-price regression where the forward pass was wrapped in ``torch.no_grad()``.

Broken: the prediction is computed under ``no_grad``, so the loss has no history;
``loss.requires_grad_()`` silences the "does not require grad" error and nothing trains.
Fix: compute the prediction outside ``no_grad`` and delete the ``requires_grad_()`` call.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


def train(steps=5):
    features = torch.randn(200, 5)
    prices = features @ torch.tensor([3.0, -2.0, 0.5, 1.0, 0.0]) + 10.0
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        with torch.no_grad():
            predicted = model(features).squeeze(-1)  # doctor: graph-break
        loss = F.mse_loss(predicted, prices)
        loss.requires_grad_()  # doctor: requires-grad-bandaid
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss


if __name__ == "__main__":
    print(f"mse {train().item():.4f}")
