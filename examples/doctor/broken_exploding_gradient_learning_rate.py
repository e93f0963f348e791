"""House-price regression on raw (unscaled) features with SGD at a learning rate of 0.1.

Broken: the features have a scale of about 5, so the curvature of the squared loss is about
25 per weight and any step size above 2 / 25 overshoots: every update is larger than the
weights, and the loss and the gradient norm grow by a factor at every step until they
overflow. Fix: a smaller learning rate (1e-3 here), standardised features, or Adam.
"""

import torch
from torch import nn

torch.manual_seed(0)

features = torch.randn(512, 13) * 5.0 + 2.0
price = features @ torch.randn(13, 1) + 0.5 * torch.randn(512, 1)

model = nn.Sequential(nn.Linear(13, 64), nn.ReLU(), nn.Linear(64, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # doctor: exploding-gradient

for _epoch in range(8):
    for start in range(0, 512, 128):
        xb, yb = features[start : start + 128], price[start : start + 128]
        loss = nn.functional.mse_loss(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
print(loss.item())
