"""A classifier trained with AdamW, weight-decay parameter groups and a cosine learning-rate schedule.

Clean: every trainable parameter is in exactly one of the two groups, and the scheduler
steps after the optimizer.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


def train(steps=6):
    model = nn.Sequential(nn.Linear(10, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 3))
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-2
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    inputs = torch.randn(128, 10)
    labels = inputs[:, :3].argmax(dim=1)
    for _ in range(steps):
        loss = F.cross_entropy(model(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return loss


if __name__ == "__main__":
    print(f"loss {train().item():.4f}")
