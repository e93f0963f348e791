"""A 1-D convolutional classifier of synthetic audio clips (1 channel, 400 samples).

Broken: the head was sized for clips of 800 samples (``nn.Linear(32 * 200, 4)``), but the
two stride-2 poolings leave 32 x 100 features per clip, so ``self.head(x)`` raises. Fix:
``nn.Linear(32 * 100, 4)``, or ``nn.AdaptiveAvgPool1d`` before the head.
"""
# expect-exit: RuntimeError: mat1 and mat2 shapes cannot be multiplied

import torch
from torch import nn

torch.manual_seed(0)


class AudioNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, 16, kernel_size=9, padding=4),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(16, 32, kernel_size=9, padding=4),
            nn.ReLU(),
            nn.MaxPool1d(2),
        )
        self.head = nn.Linear(32 * 200, 4)

    def forward(self, clips):
        x = self.features(clips).flatten(1)
        return self.head(x)  # doctor: shape-mismatch


def train():
    model = AudioNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    clips, labels = torch.randn(64, 1, 400), torch.randint(0, 4, (64,))
    for _ in range(5):
        loss = criterion(model(clips), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"loss {loss.item():.4f}")


if __name__ == "__main__":
    train()
