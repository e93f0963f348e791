"""A CNN whose classifier input size is measured with a dummy forward pass in ``__init__``,
and whose features are flattened per sample with ``x.flatten(1)``.

Clean: the sizes agree for every batch, including the last, smaller one (100 images in
batches of 32), so nothing raises.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3), nn.ReLU())
        with torch.no_grad():
            n = self.features(torch.zeros(1, 3, 20, 20)).numel()
        self.classifier = nn.Linear(n, 5)

    def forward(self, x):
        x = self.features(x)
        return self.classifier(x.flatten(1))


model = SmallCNN()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
images, labels = torch.randn(100, 3, 20, 20), torch.randint(0, 5, (100,))

for start in range(0, 100, 32):
    x, y = images[start : start + 32], labels[start : start + 32]
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

print(f"loss {loss.item():.4f}")
