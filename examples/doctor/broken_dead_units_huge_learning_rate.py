"""MLP classifier trained with plain SGD at a learning rate far too large.

Broken: the first update (lr=50) throws the first layer's weights and biases so far that
its pre-activations are negative for every sample from then on; the functional ReLU
outputs 0 everywhere and the first layer is dead for good. Fix: lr around 0.1, warm-up,
gradient clipping, or a LeakyReLU.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(20, 128)
        self.fc2 = nn.Linear(128, 4)

    def forward(self, x):
        h = F.relu(self.fc1(x))  # doctor: dead-units
        return self.fc2(h)


model = MLP()
optimizer = torch.optim.SGD(model.parameters(), lr=50.0)
x = torch.randn(256, 20) + 1.0
y = torch.randint(0, 4, (256,))

for _ in range(5):
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"loss {loss.item():.4f}")
