"""An MLP regressor whose loop keeps its losses the right way: ``+= loss.item()``,
``append(loss.detach())``, the previous step's loss kept in a variable for a relative-change
print, and a loss summed over micro-batches backpropagated once per step.
"""

import torch
from torch import nn

torch.manual_seed(0)

model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
x = torch.randn(128, 6)
y = x.sum(1, keepdim=True)

running = 0.0
curve = []
previous = None
for _step in range(5):
    optimizer.zero_grad()
    total = 0.0
    for chunk_x, chunk_y in zip(x.split(32), y.split(32), strict=True):
        total = total + nn.functional.mse_loss(model(chunk_x), chunk_y) / 4
    total.backward()
    optimizer.step()
    running += total.item()
    curve.append(total.detach())
    if previous is not None:
        change = (total.detach() - previous.detach()) / previous.detach()
    previous = total
print(f"mean loss {running / 5:.4f}, last {curve[-1].item():.4f}")
