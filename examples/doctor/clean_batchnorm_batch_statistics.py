"""An MLP with ``BatchNorm1d`` and ``Dropout`` trained in train mode on synthetic data.

Clean: in train mode BatchNorm normalises each feature with the mean and variance of the
batch, so a sample's output does depend on the other samples of its batch, on purpose
(and its running statistics, used in eval mode, do not). Not batch mixing.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)

model = nn.Sequential(
    nn.Linear(10, 64),
    nn.BatchNorm1d(64),
    nn.ReLU(),
    nn.Dropout(0.2),
    nn.Linear(64, 64),
    nn.BatchNorm1d(64),
    nn.ReLU(),
    nn.Linear(64, 3),
)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
x = torch.randn(128, 10)
y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()

for _ in range(4):
    for batch in torch.randperm(128).split(32):
        loss = F.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
print(f"final loss {loss.item():.3f}")
