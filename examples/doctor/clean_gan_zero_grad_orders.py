"""A small GAN on 2-D points whose loop zeroes in the usual orders: the discriminator's
optimizer zeroed before its backward, the generator's after its step, and the
discriminator's gradients left by the generator's backward cleared by ``D.zero_grad()``
before the generator's optimizer steps (they are not the generator's).
"""

import torch
from torch import nn

torch.manual_seed(0)

G = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2))
D = nn.Sequential(nn.Linear(2, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
bce = nn.BCEWithLogitsLoss()
real = torch.randn(64, 2) * 0.5 + torch.tensor([2.0, -1.0])
ones, zeros = torch.ones(64, 1), torch.zeros(64, 1)

for _step in range(4):
    fake = G(torch.randn(64, 4))
    opt_d.zero_grad()
    loss_d = bce(D(real), ones) + bce(D(fake.detach()), zeros)
    loss_d.backward()
    opt_d.step()

    loss_g = bce(D(fake), ones)
    loss_g.backward()
    D.zero_grad()
    opt_g.step()
    opt_g.zero_grad()
print(f"D {loss_d.item():.3f} G {loss_g.item():.3f}")
