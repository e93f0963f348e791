"""Small transformer classifier with a baseline evaluation before training.

Broken: the baseline accuracy is measured with ``classifier.eval()`` before the loop, and
``train()`` is never called, so every step trains without the encoder's dropout. Fix:
``classifier.train()`` before the training loop.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class Classifier(nn.Module):
    def __init__(self, d=32, classes=4):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        return self.head(self.encoder(x).mean(1))


def train():
    classifier = Classifier()
    x, y = torch.randn(16, 8, 32), torch.randint(0, 4, (16,))
    classifier.eval()  # doctor: eval-mode
    with torch.no_grad():
        baseline = (classifier(x).argmax(1) == y).float().mean().item()
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=1e-3)
    for _ in range(4):
        loss = F.cross_entropy(classifier(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return baseline, loss.item()


if __name__ == "__main__":
    print(train())
