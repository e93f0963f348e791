"""A WGAN with weight clipping: the critic takes three RMSprop steps per generator step.

Clean: ``p.data.clamp_(-0.01, 0.01)`` after ``opt_c.step()`` is the paper's Lipschitz
constraint, an in-place edit of the weights outside autograd, not a saturated clamp in the
graph. The critic sees ``gen(z).detach()``; the generator step backpropagates through the
critic (``-critic(gen(z)).mean()``) and the critic's gradients from it are cleared by
``opt_c.zero_grad()`` before its next backward.
"""

import torch
from torch import nn

torch.manual_seed(0)


def sample_real(n):
    angle = torch.rand(n) * 6.2832
    return torch.stack([angle.cos(), angle.sin()], dim=1) + 0.05 * torch.randn(n, 2)


def train(iterations=3, n_critic=3, clip=0.01, batch_size=64, latent_dim=8):
    gen = nn.Sequential(nn.Linear(latent_dim, 64), nn.ReLU(), nn.Linear(64, 2))
    critic = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    opt_g = torch.optim.RMSprop(gen.parameters(), lr=5e-5)
    opt_c = torch.optim.RMSprop(critic.parameters(), lr=5e-5)

    for _ in range(iterations):
        for _ in range(n_critic):
            real = sample_real(batch_size)
            fake = gen(torch.randn(batch_size, latent_dim)).detach()
            loss_c = critic(fake).mean() - critic(real).mean()
            opt_c.zero_grad()
            loss_c.backward()
            opt_c.step()
            for p in critic.parameters():
                p.data.clamp_(-clip, clip)

        z = torch.randn(batch_size, latent_dim)
        loss_g = -critic(gen(z)).mean()
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
    return loss_c, loss_g


if __name__ == "__main__":
    loss_c, loss_g = train()
    print(f"critic {loss_c.item():.5f}  generator {loss_g.item():.5f}")
