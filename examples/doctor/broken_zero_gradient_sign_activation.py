"""A binary-activation network (hidden units are +1 or -1) written with plain tensors.

Broken: ``torch.sign`` has zero derivative everywhere, so the first-layer weights get an
all-zero gradient. Fix: use a straight-through sign, ``h + (torch.sign(h) - h).detach()``,
or ``torch.tanh`` while training.
"""

import torch
import torch.nn.functional as F

torch.manual_seed(0)


def train(steps=5):
    inputs = torch.randn(200, 8)
    labels = (inputs[:, 0] * inputs[:, 1] > 0).long()
    w1 = (torch.randn(8, 32) / 8**0.5).requires_grad_()
    w2 = (torch.randn(32, 2) / 32**0.5).requires_grad_()
    optimizer = torch.optim.SGD([w1, w2], lr=0.1, momentum=0.9)

    for _ in range(steps):
        hidden = torch.sign(inputs @ w1)  # doctor: zero-gradient
        loss = F.cross_entropy(hidden @ w2, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss


if __name__ == "__main__":
    print(f"loss {train().item():.4f}")
