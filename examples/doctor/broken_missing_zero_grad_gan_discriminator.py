"""A GAN on 1-D data where only the generator's optimizer is zeroed.

Broken: ``opt_d.zero_grad()`` is missing, so the discriminator steps on the sum of every
gradient so far, including the ones the generator's backward put into ``D``. Fix: call
``opt_d.zero_grad()`` before ``loss_d.backward()``.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class Generator(nn.Module):
    def __init__(self, latent_dim=4):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, z):
        return self.net(z)


G = Generator()
D = nn.Sequential(nn.Linear(1, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
opt_g = torch.optim.SGD(G.parameters(), lr=0.01)
opt_d = torch.optim.SGD(D.parameters(), lr=0.01)

for _ in range(5):
    real = torch.randn(64, 1) * 0.5 + 2.0
    fake = G(torch.randn(64, 4))
    real_logits, fake_logits = D(real), D(fake.detach())
    loss_d = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    loss_d = loss_d + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    loss_d.backward()
    opt_d.step()  # doctor: missing-zero-grad

    opt_g.zero_grad()
    gen_logits = D(fake)
    loss_g = F.binary_cross_entropy_with_logits(gen_logits, torch.ones_like(gen_logits))
    loss_g.backward()
    opt_g.step()

print(f"loss_d {loss_d.item():.4f}  loss_g {loss_g.item():.4f}")
