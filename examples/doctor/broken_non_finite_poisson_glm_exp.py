"""Poisson regression (a GLM) of event counts on raw, unscaled features.

Broken: the rate is ``exp(X @ w + b)`` on features in the hundreds, so ``exp`` overflows
float32 on the first step and the loss is Inf. Fix: standardise the features, or predict
the log-rate and use ``F.poisson_nll_loss(log_rate, y, log_input=True)``.
"""

import torch
from torch import nn

torch.manual_seed(0)

n, d = 512, 6
features = torch.rand(n, d) * 300.0  # raw measurements, never standardised
true_w = torch.randn(d) * 0.01
counts = torch.poisson(torch.exp(features @ true_w).clamp(max=50.0))

linear = nn.Linear(d, 1)
optimizer = torch.optim.SGD(linear.parameters(), lr=1e-4)

for _ in range(5):
    rate = torch.exp(linear(features).squeeze(-1))  # doctor: non-finite
    loss = (rate - counts * torch.log(rate + 1e-8)).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"loss {loss.item():.3f}")
