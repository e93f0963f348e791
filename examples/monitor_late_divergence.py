"""A run that trains well for 150 steps, then diverges: the learning rate is raised 300x at
step 150 (a warm-up schedule with a typo). Run it under the monitor:

    gradwise monitor examples/monitor_late_divergence.py --html report.html

The monitor names the step where the gradients exploded, the ReLU units the huge steps
killed, and the step and line where the loss overflowed; report.html shows the gradient flow,
the norms and update ratios over the steps, the dead ReLU units and the loss.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
teacher = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 1))
model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

for step in range(1, 201):
    if step == 150:
        for group in opt.param_groups:
            group["lr"] = 3.0  # meant 0.003
    x = torch.randn(128, 16)
    with torch.no_grad():
        y = teacher(x)
    opt.zero_grad()
    pred = model(x)
    loss = F.mse_loss(pred, y)
    loss.backward()
    opt.step()
    if step % 50 == 0:
        print(f"step {step}: loss {loss.item():.4f}")
