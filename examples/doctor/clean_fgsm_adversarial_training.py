"""FGSM adversarial training of a small classifier.

Clean: each batch is copied into ``x_adv = x.clone().requires_grad_(True)`` so that
``loss.backward()`` yields the gradient with respect to the input; ``x_adv.grad.sign()``
builds the perturbation (data, not part of the training graph). That backward also fills
the model's gradients, which ``optimizer.zero_grad()`` clears before the training backward
on the perturbed batch.
"""

import torch
from torch import nn

torch.manual_seed(0)


def fgsm(model, criterion, x, y, epsilon):
    x_adv = x.clone().requires_grad_(True)
    loss = criterion(model(x_adv), y)
    loss.backward()
    return (x + epsilon * x_adv.grad.sign()).clamp(-3, 3)


def train(epochs=3, epsilon=0.1):
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    inputs = torch.randn(192, 8)
    labels = (inputs[:, 0] > 0).long() + (inputs[:, 1] > 0.5).long()
    for _ in range(epochs):
        for x, y in zip(inputs.split(64), labels.split(64), strict=True):
            x_perturbed = fgsm(model, criterion, x, y, epsilon)
            optimizer.zero_grad()
            loss = criterion(model(x_perturbed), y)
            loss.backward()
            optimizer.step()
    return loss


if __name__ == "__main__":
    print(f"adversarial loss {train().item():.4f}")
