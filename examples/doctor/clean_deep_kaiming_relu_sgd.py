"""Twelve-layer ReLU MLP with Kaiming init, trained by SGD with momentum at lr 0.05.

Clean: Kaiming init keeps the activations' scale constant through the layers (no growth by a
factor per layer), the gradients are moderate and the loss descends: deep, fast-learning, and
healthy.
"""

import torch
from torch import nn

torch.manual_seed(0)


def make_mlp(width=128, depth=12):
    layers = []
    for i in range(depth):
        linear = nn.Linear(16 if i == 0 else width, width)
        nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
        nn.init.zeros_(linear.bias)
        layers += [linear, nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 3))


model = make_mlp()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
x = torch.randn(512, 16)
y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
for _step in range(6):
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"loss {loss.item():.3f}")
