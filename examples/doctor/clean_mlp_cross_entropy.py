"""A plain MLP classifier trained with ``F.cross_entropy`` on raw logits.

Clean: the textbook loop.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class MLP(nn.Module):
    def __init__(self, in_features=20, hidden=64, num_classes=4):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


def train(steps=5):
    inputs = torch.randn(256, 20)
    labels = inputs[:, :4].argmax(dim=1)
    model = MLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(model(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss


if __name__ == "__main__":
    print(f"loss {train().item():.4f}")
