"""A small CNN (conv, batch norm, pooling) classifying synthetic 16x16 images.

Clean: every layer is used and trained; the convolution before ``BatchNorm`` has no bias
(batch norm would cancel it), and the running statistics are buffers, not parameters.
"""

import torch
from torch import nn

torch.manual_seed(0)

model = nn.Sequential(
    nn.Conv2d(1, 8, kernel_size=3, padding=1, bias=False),
    nn.BatchNorm2d(8),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Conv2d(8, 16, kernel_size=3, padding=1),
    nn.ReLU(),
    nn.AdaptiveAvgPool2d(1),
    nn.Flatten(),
    nn.Linear(16, 3),
)
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
images = torch.randn(32, 1, 16, 16)
labels = torch.randint(0, 3, (32,))
images[labels == 1, :, :8] += 1.0

for _ in range(5):
    loss = criterion(model(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

print(f"loss {loss.item():.4f}")
