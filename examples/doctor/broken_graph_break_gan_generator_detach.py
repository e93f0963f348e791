"""A GAN whose generator step copied the discriminator step's ``fake.detach()``.

Broken: the generator loss is computed on a detached copy of the fakes, so no gradient
reaches the generator and it never learns (its optimizer steps on nothing). The detach in
the discriminator step is correct. Fix: the generator loss must use ``D(fake)``.
"""

import torch
from torch import nn

torch.manual_seed(0)

G = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
D = nn.Sequential(nn.Linear(2, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
criterion = nn.BCEWithLogitsLoss()
opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
ones, zeros = torch.ones(64, 1), torch.zeros(64, 1)

for _ in range(5):
    real = torch.randn(64, 2) * 0.5 - 1.0
    fake = G(torch.randn(64, 8))

    opt_d.zero_grad()
    loss_d = criterion(D(real), ones) + criterion(D(fake.detach()), zeros)
    loss_d.backward()
    opt_d.step()

    opt_g.zero_grad()
    fake_for_g = fake.detach()  # doctor: graph-break
    loss_g = criterion(D(fake_for_g), ones)
    loss_g.backward()
    opt_g.step()

print(f"loss_d {loss_d.item():.4f}  loss_g {loss_g.item():.4f}")
