"""A VQ-style autoencoder: the encoder output snaps to its nearest codebook vector.

Broken: the codebook index comes from ``argmin``, so the encoder gets no gradient at all.
Fix: pass the quantized vector straight through, ``z + (quantized - z).detach()``, and add
a commitment loss.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class VQAutoencoder(nn.Module):
    def __init__(self, dim=16, code_dim=4, num_codes=8):
        super().__init__()
        self.encoder = nn.Linear(dim, code_dim)
        self.codebook = nn.Parameter(torch.randn(num_codes, code_dim))
        self.decoder = nn.Linear(code_dim, dim)

    def forward(self, x):
        z = self.encoder(x)
        distances = torch.cdist(z, self.codebook)
        codes = distances.argmin(dim=1)  # doctor: graph-break
        quantized = self.codebook[codes]
        return self.decoder(quantized)


model = VQAutoencoder()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
data = torch.randn(64, 16)

for _ in range(5):
    reconstruction = model(data)
    loss = F.mse_loss(reconstruction, data)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

print(f"reconstruction loss {loss.item():.4f}")
