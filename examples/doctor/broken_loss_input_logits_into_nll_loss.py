"""Softmax regression written with plain tensors and ``F.nll_loss``.

Broken: ``nll_loss`` expects log-probabilities but receives raw logits, so the loss is
unbounded below and just pushes the target logit up. Fix: ``F.nll_loss(F.log_softmax(logits, dim=1), labels)``
or ``F.cross_entropy(logits, labels)``.
"""

import torch
import torch.nn.functional as F

torch.manual_seed(0)


def train(steps=5):
    inputs = torch.randn(256, 6)
    labels = inputs[:, :3].argmax(dim=1)
    weight = torch.zeros(6, 3, requires_grad=True)
    bias = torch.zeros(3, requires_grad=True)
    optimizer = torch.optim.SGD([weight, bias], lr=0.5)

    for _ in range(steps):
        logits = inputs @ weight + bias
        loss = F.nll_loss(logits, labels)  # doctor: loss-input
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss


if __name__ == "__main__":
    print(f"loss {train().item():.4f}")
