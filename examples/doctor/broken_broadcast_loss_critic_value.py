"""Advantage actor-critic on random transitions: a shared body, a policy head and a value
head of ``out_features=1``.

Broken: the critic loss ``F.mse_loss(values, returns)`` compares values of shape
``(batch, 1)`` with returns of shape ``(batch,)``; it broadcasts to ``(batch, batch)`` (PyTorch
only warns). Fix: ``values.squeeze(-1)``.
"""

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Categorical

warnings.simplefilter("ignore", UserWarning)  # the script silences the warning PyTorch gives
torch.manual_seed(0)


class ActorCritic(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 64), nn.Tanh())
        self.policy = nn.Linear(64, 3)
        self.value = nn.Linear(64, 1)

    def forward(self, s):
        h = self.body(s)
        return self.policy(h), self.value(h)


net = ActorCritic()
optimizer = torch.optim.RMSprop(net.parameters(), lr=7e-4)
gamma = 0.99

for _update in range(4):
    states = torch.randn(64, 8)
    logits, values = net(states)
    dist = Categorical(logits=logits)
    actions = dist.sample()
    rewards = (actions == 1).float()
    returns = rewards + gamma * torch.randn(64).clamp(-1, 1)
    advantages = returns - values.detach().squeeze(-1)
    actor_loss = -(dist.log_prob(actions) * advantages).mean()
    critic_loss = F.mse_loss(values, returns)  # doctor: broadcast-loss
    loss = actor_loss + 0.5 * critic_loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"critic loss {critic_loss.item():.3f}")
