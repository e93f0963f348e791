"""A denoising autoencoder on synthetic 32-dimensional signals, with the mean training loss
printed after each epoch.

Broken: ``epoch_loss += loss`` adds the loss tensor itself, so ``epoch_loss`` keeps the
graph of every batch of the epoch alive (memory grows with every batch). Fix:
``epoch_loss += loss.item()``.
"""

import torch
from torch import nn

torch.manual_seed(0)

encoder = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8))
decoder = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 32))
params = list(encoder.parameters()) + list(decoder.parameters())
optimizer = torch.optim.Adam(params, lr=1e-3)
signals = torch.randn(256, 32)

for epoch in range(2):
    epoch_loss = 0.0
    for batch in signals.split(64):
        noisy = batch + 0.2 * torch.randn_like(batch)
        loss = nn.functional.mse_loss(decoder(encoder(noisy)), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        epoch_loss += loss  # doctor: graph-leak
    print(f"epoch {epoch} loss {epoch_loss.item() / 4:.4f}")
