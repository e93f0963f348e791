"""Channel pruning with learnable gates, each a hard-sigmoid ``clamp(gate, 0, 1)`` on the channel.

Broken: the gates are initialised at 3.0, so the clamp is saturated on every element and the
gate parameters get an all-zero gradient. Fix: initialise the gates inside (0, 1), or use
``torch.sigmoid`` (or a straight-through clamp) while training.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class GatedMLP(nn.Module):
    def __init__(self, in_features=16, hidden=32, num_classes=3):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.gate = nn.Parameter(torch.full((hidden,), 3.0))
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x):
        gates = torch.clamp(self.gate, 0.0, 1.0)  # doctor: zero-gradient
        return self.fc2(torch.relu(self.fc1(x)) * gates)


def train(steps=5):
    inputs = torch.randn(128, 16)
    labels = inputs[:, :3].argmax(dim=1)
    model = GatedMLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        loss = F.cross_entropy(model(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss


if __name__ == "__main__":
    print(f"loss {train().item():.4f}")
