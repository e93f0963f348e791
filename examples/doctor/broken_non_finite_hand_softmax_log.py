"""Classifier whose log-likelihood is taken from a hand-written softmax.

Broken: ``torch.log(probs)`` where the softmax of large logits underflows to exactly 0 for
some classes; the log is -inf, the gathered target log-probability is -inf for samples
whose true class is one of them, and the loss is Inf. Fix: ``F.log_softmax(logits, -1)``
(or ``F.cross_entropy`` on the logits).
"""

import torch
from torch import nn

torch.manual_seed(0)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.body(x) / 0.005  # a sharp temperature (tau = 0.005)


model = Net()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
x = torch.randn(128, 20)
y = torch.randint(0, 10, (128,))

for _ in range(5):
    probs = torch.softmax(model(x), dim=-1)
    log_probs = torch.log(probs)  # doctor: non-finite
    loss = -log_probs.gather(1, y[:, None]).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"loss {loss.item():.3f}")
