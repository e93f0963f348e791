"""A classifier whose model ends in ``nn.LogSoftmax``, trained with ``nn.NLLLoss``.

Clean: ``NLLLoss`` expects log-probabilities, which is exactly what the model returns.
"""

import torch
from torch import nn

torch.manual_seed(0)

model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4), nn.LogSoftmax(dim=1))
criterion = nn.NLLLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
inputs = torch.randn(256, 10)
labels = inputs[:, :4].argmax(dim=1)

for _ in range(5):
    log_probabilities = model(inputs)
    loss = criterion(log_probabilities, labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

print(f"loss {loss.item():.4f}")
