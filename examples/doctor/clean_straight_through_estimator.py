"""A classifier with a hard one-hot bottleneck trained with the straight-through estimator.

Clean: ``y_hard - y_soft.detach() + y_soft`` is hard in the forward pass and passes the
softmax gradient in the backward pass, so the encoder trains.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class HardBottleneck(nn.Module):
    def __init__(self, in_features=12, num_codes=6, num_classes=3):
        super().__init__()
        self.encoder = nn.Linear(in_features, num_codes)
        self.decoder = nn.Linear(num_codes, num_classes)

    def forward(self, x):
        y_soft = torch.softmax(self.encoder(x), dim=-1)
        y_hard = F.one_hot(y_soft.argmax(dim=-1), y_soft.shape[-1]).to(y_soft.dtype)
        return self.decoder(y_hard - y_soft.detach() + y_soft)


model = HardBottleneck()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
inputs = torch.randn(128, 12)
labels = inputs[:, :3].argmax(dim=1)

for _ in range(5):
    loss = F.cross_entropy(model(inputs), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

print(f"loss {loss.item():.4f}")
