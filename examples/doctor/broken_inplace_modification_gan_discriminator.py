"""A GAN whose discriminator clamps its probabilities to keep ``log`` finite.

Broken: ``out.clamp_`` overwrites the sigmoid output in place, but sigmoid's backward
needs that output, so the first ``backward`` raises. Fix: return logits and use
``nn.BCEWithLogitsLoss`` (or write ``out = out.clamp(1e-6, 1 - 1e-6)`` out of place).
"""
# expect-exit: RuntimeError: one of the variables needed for gradient computation has been modified

import torch
from torch import nn

torch.manual_seed(0)


class Discriminator(nn.Module):
    def __init__(self, dim=2, hidden=32):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.LeakyReLU(0.2))
        self.fc = nn.Linear(hidden, 1)

    def forward(self, x):
        out = torch.sigmoid(self.fc(self.body(x)))
        out.clamp_(1e-6, 1 - 1e-6)  # doctor: inplace-modification
        return out


G = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2))
D = Discriminator()
bce = nn.BCELoss()
opt_g = torch.optim.Adam(G.parameters(), lr=2e-4)
opt_d = torch.optim.Adam(D.parameters(), lr=2e-4)
ones, zeros = torch.ones(64, 1), torch.zeros(64, 1)

for _ in range(5):
    real = torch.randn(64, 2) + 3.0
    fake = G(torch.randn(64, 4))
    opt_d.zero_grad()
    loss_d = bce(D(real), ones) + bce(D(fake.detach()), zeros)
    loss_d.backward()
    opt_d.step()

    opt_g.zero_grad()
    loss_g = bce(D(fake), ones)
    loss_g.backward()
    opt_g.step()

print(f"loss_d {loss_d.item():.4f}  loss_g {loss_g.item():.4f}")
