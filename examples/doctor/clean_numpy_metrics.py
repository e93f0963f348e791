"""A classifier trained on data held in NumPy arrays, with metrics computed in NumPy.

Clean: each batch enters torch through ``torch.from_numpy``; the predictions leave it
through ``logits.detach().cpu().numpy()`` only for the accuracy and the running averages,
and the loss that is backpropagated never goes through NumPy.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
rng = np.random.default_rng(0)

features = rng.standard_normal((256, 10)).astype(np.float32)
targets = (features[:, 0] * features[:, 1] > 0).astype(np.int64)

model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
batch_size = 64

for epoch in range(2):
    order = rng.permutation(len(features))
    losses, correct = [], 0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        x = torch.from_numpy(features[idx])
        y = torch.from_numpy(targets[idx])
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

        predictions = logits.detach().cpu().numpy().argmax(axis=1)
        correct += int((predictions == targets[idx]).sum())
        losses.append(loss.item())
    print(f"epoch {epoch}: loss {np.mean(losses):.4f}  accuracy {correct / len(order):.3f}")
