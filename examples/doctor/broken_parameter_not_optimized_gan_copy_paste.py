"""A conditional least-squares GAN on 2-D class clusters, with one optimizer per network.

Broken: the generator's optimizer was copy-pasted from the discriminator's and is built on
``discriminator.parameters()``, so the generator gets gradients every step and never
changes (and the discriminator is stepped twice). Fix: ``Adam(generator.parameters())``.
"""

import torch
from torch import nn

torch.manual_seed(0)
n_classes, latent_dim = 3, 6


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.label_emb = nn.Embedding(n_classes, n_classes)
        self.model = nn.Sequential(nn.Linear(latent_dim + n_classes, 64), nn.LeakyReLU(0.2), nn.Linear(64, 2))

    def forward(self, noise, labels):
        return self.model(torch.cat((self.label_emb(labels), noise), -1))


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.label_embedding = nn.Embedding(n_classes, n_classes)
        self.model = nn.Sequential(nn.Linear(2 + n_classes, 64), nn.LeakyReLU(0.2), nn.Linear(64, 1))

    def forward(self, x, labels):
        return self.model(torch.cat((x, self.label_embedding(labels)), -1))


generator, discriminator = Generator(), Discriminator()
adversarial_loss = nn.MSELoss()
optimizer_G = torch.optim.Adam(discriminator.parameters(), 2e-4, betas=(0.5, 0.999))  # doctor: parameter-not-optimized
optimizer_D = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
centers = torch.tensor([[0.0, 2.0], [2.0, -1.0], [-2.0, -1.0]])

for _ in range(6):
    labels = torch.randint(0, n_classes, (32,))
    real = centers[labels] + 0.1 * torch.randn(32, 2)
    valid, fake = torch.ones(32, 1), torch.zeros(32, 1)

    optimizer_G.zero_grad()
    gen_labels = torch.randint(0, n_classes, (32,))
    gen = generator(torch.randn(32, latent_dim), gen_labels)
    g_loss = adversarial_loss(discriminator(gen, gen_labels), valid)
    g_loss.backward()
    optimizer_G.step()

    optimizer_D.zero_grad()
    d_real = adversarial_loss(discriminator(real, labels), valid)
    d_fake = adversarial_loss(discriminator(gen.detach(), gen_labels), fake)
    d_loss = (d_real + d_fake) / 2
    d_loss.backward()
    optimizer_D.step()
