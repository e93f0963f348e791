"""A transformer encoder classifier trained with mixed precision (bfloat16 autocast on the CPU)
and a gradient scaler, with gradient clipping.

Broken: ``clip_grad_norm_`` runs on the scaled gradients (no ``scaler.unscale_(optimizer)``
first), so ``max_norm=1.0`` is compared with norms 65536 times too large and every step is
clipped far too hard. Fix: call ``scaler.unscale_(optimizer)`` before the clip.
"""

import torch
from torch import nn

torch.manual_seed(0)


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(12, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(1))


def train():
    model = Classifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    scaler = torch.amp.GradScaler("cpu")
    for _step in range(4):
        x = torch.randn(16, 10, 12)
        y = torch.randint(0, 5, (16,))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)  # doctor: unscaled-clip
        scaler.step(optimizer)
        scaler.update()
    print(f"loss {loss.item():.4f}")


if __name__ == "__main__":
    train()
