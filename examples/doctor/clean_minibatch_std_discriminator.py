"""A GAN on synthetic 2-D points whose discriminator appends the minibatch standard
deviation as a feature (ProGAN's minibatch-stddev layer), against mode collapse.

Clean: the discriminator looks at the spread of the whole batch on purpose (a batch
statistic, ``h.std(0)``); that is its design, not a view or a softmax over the wrong axis.
Not batch mixing.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class Discriminator(nn.Module):
    def __init__(self, width=32):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(2, width), nn.LeakyReLU(0.2))
        self.out = nn.Linear(width + 1, 1)

    def forward(self, points):
        h = self.features(points)
        spread = h.std(0).mean().expand(h.shape[0], 1)  # minibatch standard deviation
        return self.out(torch.cat([h, spread], 1))


generator = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2))
discriminator = Discriminator()
opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3, betas=(0.5, 0.999))
opt_d = torch.optim.Adam(discriminator.parameters(), lr=1e-3, betas=(0.5, 0.999))
ones, zeros = torch.ones(64, 1), torch.zeros(64, 1)
for _ in range(3):
    real = torch.randn(64, 2) * 0.5 + torch.tensor([2.0, -1.0])
    fake = generator(torch.randn(64, 4))
    loss_d = F.binary_cross_entropy_with_logits(discriminator(real), ones)
    loss_d = loss_d + F.binary_cross_entropy_with_logits(discriminator(fake.detach()), zeros)
    opt_d.zero_grad()
    loss_d.backward()
    opt_d.step()
    loss_g = F.binary_cross_entropy_with_logits(discriminator(fake), ones)
    opt_g.zero_grad()
    loss_g.backward()
    opt_g.step()
print(f"losses {loss_d.item():.3f} {loss_g.item():.3f}")
