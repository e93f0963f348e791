"""Deep ReLU MLP with the usual share of inactive units.

Clean: after Kaiming init roughly half of each ReLU's outputs are 0 for a given sample,
and a few units are inactive for the whole batch; that is normal sparsity, not dead units.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)

layers = []
for d_in, d_out in [(32, 128), (128, 128), (128, 128)]:
    linear = nn.Linear(d_in, d_out)
    nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
    nn.init.zeros_(linear.bias)
    layers += [linear, nn.ReLU()]
model = nn.Sequential(*layers, nn.Linear(128, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
x = torch.randn(128, 32)
y = torch.randint(0, 10, (128,))

for _ in range(5):
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"loss {loss.item():.4f}")
