"""An MLP classifier whose model ends in ``nn.Softmax``, trained with ``nn.CrossEntropyLoss``.

Broken: ``CrossEntropyLoss`` applies ``log_softmax`` itself, so feeding it probabilities
squashes the gradients and training stalls. Fix: drop the ``nn.Softmax`` layer and pass logits.
"""

import torch
from torch import nn

torch.manual_seed(0)

model = nn.Sequential(
    nn.Linear(10, 32),
    nn.ReLU(),
    nn.Linear(32, 5),
    nn.Softmax(dim=1),
)
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
inputs = torch.randn(256, 10)
labels = inputs[:, :5].argmax(dim=1)

for _ in range(5):
    probabilities = model(inputs)
    loss = criterion(probabilities, labels)  # doctor: loss-input
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

print(f"loss {loss.item():.4f}")
