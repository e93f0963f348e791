"""A tiny DCGAN on 8x8 single-channel images, with the PyTorch DCGAN example's loop.

Clean: the discriminator ends in ``nn.Sigmoid`` and feeds ``nn.BCELoss``;
``nn.LeakyReLU(0.2, inplace=True)`` follows convolutions (whose backward does not need
their output); the label tensor is refilled in place with ``label.fill_`` only after the
backward that used it; ``netD``'s real and fake backwards deliberately add up before
``optimizerD.step()``; and both networks are zeroed with ``net.zero_grad()`` each iteration.
"""

import torch
from torch import nn

torch.manual_seed(0)

nz, ngf, ndf = 8, 16, 16
real_label, fake_label = 1.0, 0.0


def weights_init(m):
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight.data, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight.data, 1.0, 0.02)
        nn.init.constant_(m.bias.data, 0)


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf, 4, 1, 0, bias=False),  # 1x1 -> 4x4
            nn.BatchNorm2d(ngf),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf, 1, 4, 2, 1, bias=False),  # 4x4 -> 8x8
            nn.Tanh(),
        )

    def forward(self, noise):
        return self.main(noise)


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(1, ndf, 4, 2, 1, bias=False),  # 8x8 -> 4x4
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False),  # 4x4 -> 2x2
            nn.BatchNorm2d(ndf * 2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, 1, 2, 1, 0, bias=False),  # 2x2 -> 1x1
            nn.Sigmoid(),
        )

    def forward(self, image):
        return self.main(image)


netG = Generator()
netG.apply(weights_init)
netD = Discriminator()
netD.apply(weights_init)

criterion = nn.BCELoss()
optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))

# "real" images: smooth blobs in [-1, 1]
grid = torch.linspace(-1, 1, 8)
dataset = torch.tanh(2 * torch.randn(128, 1, 1, 1) - grid.view(1, 1, 8, 1) ** 2 - grid.view(1, 1, 1, 8) ** 2)
dataloader = dataset.split(32)

for data in dataloader:
    # (1) update D: maximize log(D(x)) + log(1 - D(G(z)))
    netD.zero_grad()
    b_size = data.size(0)
    label = torch.full((b_size,), real_label, dtype=torch.float)
    output = netD(data).view(-1)
    errD_real = criterion(output, label)
    errD_real.backward()

    noise = torch.randn(b_size, nz, 1, 1)
    fake = netG(noise)
    label.fill_(fake_label)
    output = netD(fake.detach()).view(-1)
    errD_fake = criterion(output, label)
    errD_fake.backward()
    errD = errD_real + errD_fake
    optimizerD.step()

    # (2) update G: maximize log(D(G(z)))
    netG.zero_grad()
    label.fill_(real_label)  # fake labels are real for the generator cost
    output = netD(fake).view(-1)
    errG = criterion(output, label)
    errG.backward()
    optimizerG.step()

print(f"Loss_D {errD.item():.4f}  Loss_G {errG.item():.4f}")
