"""An MLP with a hand-written feature mask applied to its sigmoid hidden layer.

Broken: ``mul_`` overwrites the sigmoid output in place, but sigmoid's backward needs that
output, so ``backward`` raises. Fix: use the out-of-place ``hidden = hidden * self.mask``.
"""
# expect-exit: RuntimeError: one of the variables needed for gradient computation has been modified

import torch
from torch import nn

torch.manual_seed(0)


class MaskedMLP(nn.Module):
    def __init__(self, in_features=12, hidden=24, num_classes=3):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.register_buffer("mask", (torch.rand(hidden) > 0.25).float())

    def forward(self, x):
        hidden = torch.sigmoid(self.fc1(x))
        hidden.mul_(self.mask)  # doctor: inplace-modification
        return self.fc2(hidden)


model = MaskedMLP()
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
inputs = torch.randn(64, 12)
labels = torch.randint(0, 3, (64,))

for _ in range(5):
    loss = criterion(model(inputs), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

print(f"loss {loss.item():.4f}")
