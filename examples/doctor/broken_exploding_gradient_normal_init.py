"""Deep ReLU MLP whose weights are drawn with a standard deviation of 1.

Broken: ``nn.init.normal_(w, std=1.0)`` on 256-wide layers multiplies the activations by
about 11 per layer (sqrt(256 / 2)); the gradients grow the same way, reach about 1e11 at the
first step, and the first update sends the loss to NaN. Fix: ``nn.init.kaiming_normal_``
(std = sqrt(2 / fan_in)) or the layers' default init.
"""

import torch
from torch import nn

torch.manual_seed(0)


def init_weights(module):
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=1.0)  # doctor: exploding-gradient
        nn.init.zeros_(module.bias)


def make_model(width=256, depth=8, classes=10):
    layers = [nn.Linear(32, width), nn.ReLU()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def train():
    model = make_model()
    model.apply(init_weights)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    x = torch.randn(256, 32)
    y = torch.randint(0, 10, (256,))
    for _ in range(5):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


if __name__ == "__main__":
    print(train())
