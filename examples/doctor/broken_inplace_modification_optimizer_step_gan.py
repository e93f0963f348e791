"""A GAN that reuses one discriminator pass on the fakes for both players' losses.

Broken: ``loss_g`` backpropagates through the graph of ``d_fake = D(fake)``, which saved
``D``'s weights, but ``opt_d.step()`` has already updated those weights in place, so
``loss_g.backward()`` raises. Fix: step ``D`` on ``D(fake.detach())`` and recompute
``D(fake)`` for the generator loss after ``opt_d.step()``.
"""
# expect-exit: RuntimeError: one of the variables needed for gradient computation has been modified

import torch
from torch import nn

torch.manual_seed(0)


def train(steps=5, batch_size=64, latent_dim=4):
    G = nn.Sequential(nn.Linear(latent_dim, 32), nn.ReLU(), nn.Linear(32, 2))
    D = nn.Sequential(nn.Linear(2, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
    bce = nn.BCEWithLogitsLoss()
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    ones, zeros = torch.ones(batch_size, 1), torch.zeros(batch_size, 1)
    for _ in range(steps):
        real = torch.randn(batch_size, 2) * 0.3 + 1.0
        fake = G(torch.randn(batch_size, latent_dim))
        d_fake = D(fake)

        loss_d = bce(D(real), ones) + bce(d_fake, zeros)
        opt_d.zero_grad()
        loss_d.backward(retain_graph=True)
        opt_d.step()  # doctor: inplace-modification

        loss_g = bce(d_fake, ones)
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
    return loss_d, loss_g


if __name__ == "__main__":
    loss_d, loss_g = train()
    print(f"loss_d {loss_d.item():.4f}  loss_g {loss_g.item():.4f}")
