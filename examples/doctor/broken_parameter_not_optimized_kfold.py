"""3-fold cross-validation meant to train a fresh model on every fold.

Broken: the optimizer is built once, before the loop, from the first model; the
``model = Net()`` that resets the weights after each fold makes a new model whose
parameters are in no optimizer, so from the second fold on ``optimizer.step()`` updates
the discarded first model and nothing trains. Fix: build the model and the optimizer
together at the start of each fold.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 24)
        self.fc2 = nn.Linear(24, 2)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


inputs = torch.randn(60, 6)
labels = (inputs.sum(dim=1) > 0).long()
folds = torch.arange(60).chunk(3)
model = Net()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # doctor: parameter-not-optimized
accuracies = []

for k in range(3):
    train_idx = torch.cat([f for i, f in enumerate(folds) if i != k])
    for _ in range(2):
        loss = F.cross_entropy(model(inputs[train_idx]), labels[train_idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        accuracies.append((model(inputs[folds[k]]).argmax(1) == labels[folds[k]]).float().mean().item())
    model = Net()  # fresh weights for the next fold

print("fold accuracies " + ", ".join(f"{a:.2f}" for a in accuracies))
