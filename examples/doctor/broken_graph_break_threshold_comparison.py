"""Magnitude pruning of input features with a learned threshold, in plain tensor code.

Broken: the keep-mask comes from the comparison ``features.abs() > threshold``, which has no
gradient, so ``threshold`` never trains. Fix: a soft mask such as
``torch.sigmoid((features.abs() - threshold) / 0.1)``, or a straight-through mask.
"""

import torch
import torch.nn.functional as F

torch.manual_seed(0)


def train(steps=5):
    features = torch.randn(256, 12)
    labels = (features[:, 0] + features[:, 1] > 0).long()
    threshold = torch.tensor(0.5, requires_grad=True)
    weight = (torch.randn(12, 2) / 12**0.5).requires_grad_()
    optimizer = torch.optim.Adam([threshold, weight], lr=1e-2)
    for _ in range(steps):
        keep = (features.abs() > threshold).float()  # doctor: graph-break
        loss = F.cross_entropy((features * keep) @ weight, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss


if __name__ == "__main__":
    print(f"loss {train().item():.4f}")
