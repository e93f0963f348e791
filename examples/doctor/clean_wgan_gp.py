"""A WGAN-GP on 2-D data: the critic is trained with a gradient penalty on interpolates.

Clean: the interpolates ``alpha * real + (1 - alpha) * fake.detach()`` get
``.requires_grad_(True)`` because the penalty needs the critic's gradient with respect to
them (``torch.autograd.grad(..., create_graph=True)``); that is not a band-aid over a cut.
They are consumed, not optimized, and both networks are trained by their own Adam.
"""

import torch
from torch import nn

torch.manual_seed(0)


class Critic(nn.Module):
    def __init__(self, hidden=64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden), nn.LeakyReLU(0.2))
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.out(self.net(x)).squeeze(-1)


def gradient_penalty(critic, real, fake):
    alpha = torch.rand(real.size(0), 1)
    interpolates = (alpha * real + (1 - alpha) * fake.detach()).requires_grad_(True)
    scores = critic(interpolates)
    (grads,) = torch.autograd.grad(scores, interpolates, grad_outputs=torch.ones_like(scores), create_graph=True)
    return ((grads.norm(2, dim=1) - 1) ** 2).mean()


generator = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 2))
critic = Critic()
opt_g = torch.optim.Adam(generator.parameters(), lr=1e-4, betas=(0.5, 0.9))
opt_c = torch.optim.Adam(critic.parameters(), lr=1e-4, betas=(0.5, 0.9))
lambda_gp, n_critic, batch_size = 10.0, 2, 64
centers = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])

for _ in range(3):
    for _ in range(n_critic):
        real = centers[torch.randint(0, 4, (batch_size,))] + 0.1 * torch.randn(batch_size, 2)
        fake = generator(torch.randn(batch_size, 8))
        opt_c.zero_grad()
        loss_c = critic(fake.detach()).mean() - critic(real).mean()
        loss_c = loss_c + lambda_gp * gradient_penalty(critic, real, fake)
        loss_c.backward()
        opt_c.step()

    opt_g.zero_grad()
    loss_g = -critic(generator(torch.randn(batch_size, 8))).mean()
    loss_g.backward()
    opt_g.step()

print(f"critic {loss_c.item():.4f}  generator {loss_g.item():.4f}")
