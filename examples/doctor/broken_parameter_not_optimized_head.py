"""A two-part classifier (encoder + head) where the optimizer was given only the encoder.

Broken: the head's parameters get gradients every step but are in no optimizer parameter
group, so they stay at their initial values. Fix: ``torch.optim.Adam(model.parameters())``.
"""

import torch
from torch import nn

torch.manual_seed(0)


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(10, 32), nn.ReLU())
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        return self.head(self.encoder(x))


model = Classifier()
optimizer = torch.optim.Adam(model.encoder.parameters(), lr=1e-2)  # doctor: parameter-not-optimized
criterion = nn.CrossEntropyLoss()
inputs = torch.randn(128, 10)
labels = inputs[:, :3].argmax(dim=1)

for _ in range(5):
    loss = criterion(model(inputs), labels)
    model.zero_grad()
    loss.backward()
    optimizer.step()

print(f"loss {loss.item():.4f}")
