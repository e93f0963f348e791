"""An MLP classifier with a LayerNorm that was meant to sit between the two layers.

Broken: ``self.norm`` is created but ``forward`` never calls it, so its weight and bias
never get a gradient. Fix: apply ``self.norm`` in ``forward``, or delete it.
"""

import torch
from torch import nn

torch.manual_seed(0)


class Classifier(nn.Module):
    def __init__(self, in_features=20, hidden=32, num_classes=4):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.norm = nn.LayerNorm(hidden)  # doctor: unused-parameter
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


inputs = torch.randn(128, 20)
labels = torch.randint(0, 4, (128,))
model = Classifier()
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

for _ in range(5):
    loss = criterion(model(inputs), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

print(f"loss {loss.item():.4f}")
