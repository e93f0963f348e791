"""A VQ-VAE-style autoencoder done right: nearest-code lookup with a straight-through gradient.

Clean: the code index comes from ``argmin`` (no gradient, as intended); the decoder gets
``z + (q - z).detach()``, which passes the decoder's gradient straight to the encoder; the
codebook learns from ``F.mse_loss(q, z.detach())`` and the encoder is held near its codes
by the commitment loss ``0.25 * F.mse_loss(z, q.detach())``.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class VectorQuantizer(nn.Module):
    def __init__(self, num_codes=16, code_dim=4, beta=0.25):
        super().__init__()
        self.codebook = nn.Embedding(num_codes, code_dim)
        self.codebook.weight.data.uniform_(-1 / num_codes, 1 / num_codes)
        self.beta = beta

    def forward(self, z):
        distances = torch.cdist(z, self.codebook.weight)
        indices = distances.argmin(dim=1)
        q = self.codebook(indices)
        codebook_loss = F.mse_loss(q, z.detach())
        commitment_loss = self.beta * F.mse_loss(z, q.detach())
        z_q = z + (q - z).detach()
        return z_q, codebook_loss + commitment_loss, indices


class VQAutoencoder(nn.Module):
    def __init__(self, dim=16, code_dim=4):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, code_dim))
        self.quantizer = VectorQuantizer(code_dim=code_dim)
        self.decoder = nn.Sequential(nn.Linear(code_dim, 32), nn.ReLU(), nn.Linear(32, dim))

    def forward(self, x):
        z_q, vq_loss, indices = self.quantizer(self.encoder(x))
        return self.decoder(z_q), vq_loss, indices


model = VQAutoencoder()
optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
data = torch.randn(128, 16)

for _ in range(5):
    reconstruction, vq_loss, indices = model(data)
    loss = F.mse_loss(reconstruction, data) + vq_loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

print(f"loss {loss.item():.4f}  codes used {indices.unique().numel()}")
