"""ReLU RNN for sequence regression whose recurrent matrix is orthogonal with gain 1.6.

Broken: ``nn.init.orthogonal_(weight_hh, gain=1.6)`` makes the hidden state grow by about
1.6 per time step, so over 40 steps the activations and the gradients through time grow by
about 1e8 before the first update. Fix: gain 1 (or below) for the recurrent matrix, an LSTM
or GRU, and ``torch.nn.utils.clip_grad_norm_``.
"""

import torch
from torch import nn

torch.manual_seed(0)


class SequenceRegressor(nn.Module):
    def __init__(self, inputs=8, hidden=64):
        super().__init__()
        self.rnn = nn.RNN(inputs, hidden, nonlinearity="relu", batch_first=True)
        nn.init.orthogonal_(self.rnn.weight_hh_l0, gain=1.6)  # doctor: exploding-gradient
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


model = SequenceRegressor()
optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
x = torch.randn(32, 40, 8)
y = x.sum(dim=(1, 2)).unsqueeze(1)
for _step in range(5):
    loss = nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(loss.item())
