"""Train a classifier and evaluate it on a held-out split after every epoch.

Clean: ``torch.no_grad()`` wraps only the evaluation, whose results are never backpropagated.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.1))
        self.out = nn.Linear(32, 2)

    def forward(self, x):
        return self.out(self.body(x))


def train(epochs=4):
    data = torch.randn(300, 8)
    labels = (data[:, 0] + data[:, 1] > 0).long()
    train_x, train_y, val_x, val_y = data[:200], labels[:200], data[200:], labels[200:]
    model = Classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        model.train()
        loss = F.cross_entropy(model(train_x), train_y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.eval()
        with torch.no_grad():
            val_loss = F.cross_entropy(model(val_x), val_y)
    return val_loss


if __name__ == "__main__":
    print(f"validation loss {train().item():.4f}")
