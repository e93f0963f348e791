"""MLP classifier with Dropout and BatchNorm, validated after every epoch.

Broken: ``evaluate()`` calls ``model.eval()`` and the training loop never calls
``model.train()`` again, so from the second epoch on the model trains with dropout off and
BatchNorm frozen on its running statistics. Fix: ``model.train()`` at the start of every
epoch.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


def evaluate(model, x, y):
    model.eval()  # doctor: eval-mode
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


model = nn.Sequential(nn.Linear(10, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
x, y = torch.randn(64, 10), torch.randint(0, 3, (64,))
x_val, y_val = torch.randn(32, 10), torch.randint(0, 3, (32,))
model.train()
for _epoch in range(3):
    for start in range(0, 64, 32):
        loss = F.cross_entropy(model(x[start : start + 32]), y[start : start + 32])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    accuracy = evaluate(model, x_val, y_val)
print(f"validation accuracy {accuracy:.2f}")
