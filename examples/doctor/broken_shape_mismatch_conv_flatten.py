"""A LeNet-style CNN classifying synthetic 28x28 digits.

Broken: the flatten before the classifier hard-codes 500 features (``x.view(-1, 500)``),
but two 5x5 convolutions and two 2x2 poolings leave 20 x 4 x 4 = 320 per sample, so the
first forward raises. Fix: ``x.flatten(1)`` and ``nn.Linear(320, 50)``.
"""
# expect-exit: RuntimeError: shape '[-1, 500]' is invalid for input of size

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.fc1 = nn.Linear(500, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = x.view(-1, 500)  # doctor: shape-mismatch
        x = F.relu(self.fc1(x))
        return self.fc2(x)


model = LeNet()
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
images = torch.randn(256, 1, 28, 28)
labels = torch.randint(0, 10, (256,))

for start in range(0, 256, 64):
    x, y = images[start : start + 64], labels[start : start + 64]
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

print(f"loss {loss.item():.4f}")
