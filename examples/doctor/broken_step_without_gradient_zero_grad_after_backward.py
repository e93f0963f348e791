"""A small CNN classifier on 12x12 images, trained with Adam.

Broken: ``optimizer.zero_grad()`` sits between ``loss.backward()`` and ``optimizer.step()``, so
every step sees the gradients already cleared and the model never learns. Fix: zero the
gradients before the backward (or after the step).
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 3 * 3, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


model = SmallCNN()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
images = torch.randn(64, 1, 12, 12)
labels = torch.randint(0, 3, (64,))

for _epoch in range(4):
    for start in range(0, 64, 32):
        logits = model(images[start : start + 32])
        loss = F.cross_entropy(logits, labels[start : start + 32])
        loss.backward()
        optimizer.zero_grad()  # doctor: step-without-gradient
        optimizer.step()
print(f"loss {loss.item():.4f}")
