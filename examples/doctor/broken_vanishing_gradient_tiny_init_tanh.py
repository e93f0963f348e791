"""Deep tanh network whose weights are initialised with a tiny standard deviation.

Broken: ``nn.init.normal_(w, std=0.01)`` shrinks the activations by about 10x per layer;
the backward signal shrinks the same way, and the first layers' gradients are orders of
magnitude below the last layers'. Fix: ``xavier_normal_`` (tanh) or Kaiming init.
"""

import torch
from torch import nn

torch.manual_seed(0)


class DeepTanh(nn.Module):
    def __init__(self, depth=8, width=128):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(width, width) for _ in range(depth)])  # doctor: vanishing-gradient
        self.head = nn.Linear(width, 1)
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=0.01)

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x)


def train():
    model = DeepTanh()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(128, 128)
    y = x[:, :4].sum(1, keepdim=True)
    for _ in range(4):
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


if __name__ == "__main__":
    torch.manual_seed(0)
    print(train())
