"""A classifier whose ``forward`` returns log-probabilities, trained with ``F.cross_entropy``.

Broken: ``cross_entropy`` applies ``log_softmax`` a second time. Because ``log_softmax`` is
shift-invariant the loss value is unchanged, so nothing fails; the mistake is that the
outputs are log-probabilities read as logits. Fix: pair them with ``F.nll_loss``, or return
logits from ``forward``.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class Classifier(nn.Module):
    def __init__(self, in_features=10, num_classes=4):
        super().__init__()
        self.hidden = nn.Linear(in_features, 32)
        self.out = nn.Linear(32, num_classes)

    def forward(self, x):
        return F.log_softmax(self.out(torch.relu(self.hidden(x))), dim=-1)


model = Classifier()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
inputs = torch.randn(256, 10)
labels = inputs[:, :4].argmax(dim=1)

for _ in range(5):
    log_probabilities = model(inputs)
    loss = F.cross_entropy(log_probabilities, labels)  # doctor: loss-input
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

print(f"loss {loss.item():.4f}")
