"""An MLP classifies synthetic tabular data into 4 classes; its forward ends in a
log-softmax, trained with ``F.nll_loss``.

Broken: ``F.log_softmax(logits, dim=0)`` normalises over dim 0, the batch, instead of the
classes: each sample's log-probabilities depend on the logits of every other sample in the
batch, and the predictions change with what else is in the batch. Fix:
``F.log_softmax(logits, dim=1)`` (or ``dim=-1``).
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class Classifier(nn.Module):
    def __init__(self, features=12, classes=4):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, x):
        logits = self.net(x)
        return F.log_softmax(logits, dim=0)  # doctor: batch-mixing


def train(steps=6, batch=64):
    weights = torch.randn(12, 4)
    model = Classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(steps):
        x = torch.randn(batch, 12)
        y = (x @ weights).argmax(1)
        loss = F.nll_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


if __name__ == "__main__":
    print(f"final loss {train():.3f}")
