"""Tabular regressor whose hidden layer's bias was initialised to a large negative value.

Broken: ``nn.init.constant_(self.hidden.bias, -4.0)`` puts every pre-activation below 0, so
the ReLU outputs 0 for every sample and passes no gradient: the hidden layer never trains
and only the output bias learns. Fix: a zero (or small positive) bias, Kaiming init.
"""

import torch
from torch import nn

torch.manual_seed(0)


class Regressor(nn.Module):
    def __init__(self, d_in=12, width=64):
        super().__init__()
        self.hidden = nn.Linear(d_in, width)
        self.act = nn.ReLU()  # doctor: dead-units
        self.out = nn.Linear(width, 1)
        nn.init.constant_(self.hidden.bias, -4.0)  # "start sparse"

    def forward(self, x):
        return self.out(self.act(self.hidden(x)))


model = Regressor()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
x = torch.randn(512, 12)
y = x[:, :3].sum(1, keepdim=True)

for _ in range(5):
    loss = nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"loss {loss.item():.4f}")
