"""An MLP classifier trained with SGD and momentum.

Broken: the loop never calls ``optimizer.zero_grad()``, so each step's gradient is added to
all the previous ones and the updates keep growing. Fix: call ``optimizer.zero_grad()``
before ``loss.backward()`` in every step.
"""

import torch
from torch import nn

torch.manual_seed(0)

model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
inputs = torch.randn(256, 20)
labels = inputs[:, :4].argmax(dim=1)

for _ in range(5):
    loss = criterion(model(inputs), labels)
    loss.backward()
    optimizer.step()  # doctor: missing-zero-grad

print(f"loss {loss.item():.4f}")
