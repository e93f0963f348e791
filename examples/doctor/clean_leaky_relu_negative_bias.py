"""MLP with LeakyReLU activations and a negative bias initialisation.

Clean: a LeakyReLU cannot die (its slope below 0 is 0.01, not 0), so the negative bias
only slows the start; the gradient reaches every unit.
"""

import torch
from torch import nn

torch.manual_seed(0)

model = nn.Sequential(nn.Linear(12, 64), nn.LeakyReLU(0.01), nn.Linear(64, 1))
nn.init.constant_(model[0].bias, -2.0)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
x = torch.randn(256, 12)
y = x[:, :3].sum(1, keepdim=True)

for _ in range(5):
    loss = nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"loss {loss.item():.4f}")
