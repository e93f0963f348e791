"""A binary classifier whose ``forward`` returns probabilities, trained with ``BCEWithLogits``.

Broken: ``binary_cross_entropy_with_logits`` applies its own sigmoid, so the model's sigmoid
is applied twice and predictions can never go below 0.5. Fix: return the logit from
``forward`` (apply ``torch.sigmoid`` only for prediction), or use ``F.binary_cross_entropy``.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class SpamClassifier(nn.Module):
    def __init__(self, num_features=30):
        super().__init__()
        self.hidden = nn.Linear(num_features, 16)
        self.out = nn.Linear(16, 1)

    def forward(self, x):
        return torch.sigmoid(self.out(torch.relu(self.hidden(x)))).squeeze(-1)


def train(steps=5):
    features = torch.randn(300, 30)
    is_spam = (features[:, 0] - features[:, 1] > 0).float()
    model = SpamClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(model(features), is_spam)  # doctor: loss-input
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss


if __name__ == "__main__":
    print(f"loss {train().item():.4f}")
