"""Gradient accumulation: four micro-batches per optimizer step, as for a large effective batch.

Clean: gradients are accumulated on purpose and zeroed after every optimizer step.
"""

import torch
from torch import nn

torch.manual_seed(0)

model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
accumulation_steps = 4
inputs = torch.randn(16 * 8, 10)
labels = inputs[:, :3].argmax(dim=1)

optimizer.zero_grad()
for micro_step, (x, y) in enumerate(zip(inputs.split(16), labels.split(16), strict=True)):
    loss = criterion(model(x), y) / accumulation_steps
    loss.backward()
    if (micro_step + 1) % accumulation_steps == 0:
        optimizer.step()
        optimizer.zero_grad()

print(f"loss {loss.item() * accumulation_steps:.4f}")
