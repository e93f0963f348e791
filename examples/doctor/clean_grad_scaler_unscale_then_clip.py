"""Mixed-precision training (bfloat16 autocast on the CPU) with a gradient scaler: gradients
unscaled with ``scaler.unscale_(optimizer)`` before ``clip_grad_norm_``; a second model
trained with the scaler and no clipping; a third clipped with the scaler disabled.
"""

import torch
from torch import nn

torch.manual_seed(0)

x = torch.randn(64, 10)
y = x[:, :3].sum(1, keepdim=True)
models = [nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1)) for _ in range(3)]
optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in models]
scalers = [torch.amp.GradScaler("cpu"), torch.amp.GradScaler("cpu"), torch.amp.GradScaler("cpu", enabled=False)]

for _step in range(4):
    for i, (model, optimizer, scaler) in enumerate(zip(models, optimizers, scalers, strict=True)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.mse_loss(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if i == 0:
            scaler.unscale_(optimizer)
        if i != 1:
            nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        scaler.step(optimizer)
        scaler.update()
print(f"loss {loss.item():.4f}")
