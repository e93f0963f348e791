"""Contrastive embedding training with a learned temperature, written with plain tensors.

Broken: ``log_temperature`` gets a gradient every step but was left out of the list given
to the optimizer, so it never changes. Fix: ``torch.optim.Adam([projection, log_temperature])``.
"""

import torch
import torch.nn.functional as F

torch.manual_seed(0)


def train(steps=5):
    views_a = torch.randn(32, 16)
    views_b = views_a + 0.1 * torch.randn(32, 16)
    projection = (torch.randn(16, 8) / 4).requires_grad_()
    log_temperature = torch.tensor(0.0, requires_grad=True)
    optimizer = torch.optim.Adam([projection], lr=1e-2)  # doctor: parameter-not-optimized
    for _ in range(steps):
        za = F.normalize(views_a @ projection, dim=1)
        zb = F.normalize(views_b @ projection, dim=1)
        logits = za @ zb.T / log_temperature.exp()
        loss = F.cross_entropy(logits, torch.arange(32))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss


if __name__ == "__main__":
    print(f"loss {train().item():.4f}")
