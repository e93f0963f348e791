"""Fine-tuning a linear head on top of a frozen "pretrained" feature extractor.

Clean: the backbone's parameters have ``requires_grad=False`` and are left out of the
optimizer on purpose; only the head trains.
"""

import torch
from torch import nn

torch.manual_seed(0)

backbone = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
for parameter in backbone.parameters():
    parameter.requires_grad = False
backbone.eval()
head = nn.Linear(64, 5)
model = nn.Sequential(backbone, head)

optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
criterion = nn.CrossEntropyLoss()
inputs = torch.randn(128, 32)
labels = torch.randint(0, 5, (128,))

for _ in range(5):
    loss = criterion(model(inputs), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

print(f"loss {loss.item():.4f}")
