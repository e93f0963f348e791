"""Gaussian mixture negative log-likelihood with some components switched off by ``-inf``.

Clean: inactive components get log-weight ``-inf``; ``torch.logsumexp`` over the components
is finite because every row keeps active ones, and its gradient is finite.
"""

import math

import torch

torch.manual_seed(0)

k, d = 6, 2
means = torch.randn(k, d, requires_grad=True)
log_scales = torch.zeros(k, requires_grad=True)
logits = torch.zeros(k, requires_grad=True)
active = torch.tensor([True, True, True, True, False, False])
optimizer = torch.optim.Adam([means, log_scales, logits], lr=5e-2)
data = torch.cat([torch.randn(100, d) + 3, torch.randn(100, d) - 3])

for _ in range(5):
    log_w = torch.log_softmax(logits.masked_fill(~active, float("-inf")), dim=0)
    sq = ((data[:, None, :] - means[None]) ** 2).sum(-1)
    log_pdf = -0.5 * sq / torch.exp(2 * log_scales) - d * log_scales - 0.5 * d * math.log(2 * math.pi)
    nll = -torch.logsumexp(log_w + log_pdf, dim=1).mean()
    optimizer.zero_grad()
    nll.backward()
    optimizer.step()
print(f"nll {nll.item():.3f}")
