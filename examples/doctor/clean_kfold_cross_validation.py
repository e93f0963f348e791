"""3-fold cross-validation of a small classifier on synthetic data.

Clean: every fold builds a NEW model and a NEW optimizer over that model's parameters
(``model = Net()`` then ``optimizer = ...`` inside the loop), trains it for two epochs and
validates under ``torch.no_grad()``. Earlier folds' models are simply discarded.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class Net(nn.Module):
    def __init__(self, in_features=10, hidden=32, num_classes=2):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


inputs = torch.randn(90, 10)
labels = (inputs[:, 0] + inputs[:, 1] > 0).long()
folds = torch.randperm(len(inputs)).chunk(3)
scores = []

for fold in range(3):
    val_idx = folds[fold]
    train_idx = torch.cat([f for i, f in enumerate(folds) if i != fold])
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    for _ in range(2):
        model.train()
        loss = F.cross_entropy(model(inputs[train_idx]), labels[train_idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.eval()
    with torch.no_grad():
        predictions = model(inputs[val_idx]).argmax(dim=1)
        scores.append((predictions == labels[val_idx]).float().mean().item())

print(f"fold accuracies {', '.join(f'{s:.2f}' for s in scores)}")
