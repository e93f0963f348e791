"""Softmax regression with a learned temperature, written as plain functions.

Broken: the temperature is read out with ``.item()`` and re-wrapped with ``torch.tensor``,
so ``log_temperature`` never gets a gradient. Fix: divide by ``log_temperature.exp()`` directly.
"""

import torch
import torch.nn.functional as F

torch.manual_seed(0)


def train(steps=5):
    inputs = torch.randn(128, 10)
    labels = (inputs[:, 0] > 0).long() + (inputs[:, 1] > 0).long()

    weight = torch.randn(10, 3, requires_grad=True)
    log_temperature = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.SGD([weight, log_temperature], lr=0.1)

    for _ in range(steps):
        temperature = log_temperature.exp().item()  # doctor: graph-break
        logits = inputs @ weight / torch.tensor(temperature)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss


if __name__ == "__main__":
    print(f"final loss {train().item():.4f}")
