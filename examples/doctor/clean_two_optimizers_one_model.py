"""One model trained by two optimizers: SGD for the encoder, Adam for the classifier head.

Clean: the two optimizers partition the model's parameters (``model.encoder`` and
``model.head``), so every parameter is optimized exactly once; both are zeroed and stepped
every iteration.
"""

import torch
from torch import nn

torch.manual_seed(0)


class Classifier(nn.Module):
    def __init__(self, in_features=16, hidden=32, num_classes=4):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.head(self.encoder(x))


def train(steps=5):
    model = Classifier()
    encoder_opt = torch.optim.SGD(model.encoder.parameters(), lr=0.05, momentum=0.9)
    head_opt = torch.optim.Adam(model.head.parameters(), lr=1e-2)
    criterion = nn.CrossEntropyLoss()
    inputs = torch.randn(128, 16)
    labels = inputs[:, :4].argmax(dim=1)
    for _ in range(steps):
        encoder_opt.zero_grad()
        head_opt.zero_grad()
        loss = criterion(model(inputs), labels)
        loss.backward()
        encoder_opt.step()
        head_opt.step()
    return loss


if __name__ == "__main__":
    print(f"loss {train().item():.4f}")
