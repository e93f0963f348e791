"""A textbook GAN on a 2-D Gaussian blob: MLP generator and discriminator, one Adam each.

Clean: the discriminator returns raw logits (no sigmoid) into ``nn.BCEWithLogitsLoss()``;
its last layer starts small, so the first logits all sit in [0, 1] without being
probabilities. The discriminator step uses ``D(fake.detach())``; the generator step
backpropagates through ``D``, which also fills ``D``'s gradients, and that is harmless
because ``opt_d.zero_grad()`` clears them before the next discriminator backward.
"""

import torch
from torch import nn

torch.manual_seed(0)

latent_dim = 4
G = nn.Sequential(nn.Linear(latent_dim, 32), nn.ReLU(), nn.Linear(32, 2))
D = nn.Sequential(nn.Linear(2, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
nn.init.normal_(D[-1].weight, std=0.01)
nn.init.constant_(D[-1].bias, 0.1)

criterion = nn.BCEWithLogitsLoss()
opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))

batch_size = 64
ones = torch.ones(batch_size, 1)
zeros = torch.zeros(batch_size, 1)

for _ in range(5):
    real = torch.randn(batch_size, 2) * 0.5 + torch.tensor([2.0, -1.0])
    fake = G(torch.randn(batch_size, latent_dim))

    opt_d.zero_grad()
    loss_d = criterion(D(real), ones) + criterion(D(fake.detach()), zeros)
    loss_d.backward()
    opt_d.step()

    opt_g.zero_grad()
    loss_g = criterion(D(fake), ones)
    loss_g.backward()
    opt_g.step()

print(f"loss_d {loss_d.item():.4f}  loss_g {loss_g.item():.4f}")
