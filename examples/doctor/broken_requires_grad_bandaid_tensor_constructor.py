"""REINFORCE on a toy bandit-like environment, in the shape of PyTorch's example.

Broken: each step keeps ``log_prob(action).item()``, and the episode's log-probabilities
are rebuilt with ``torch.tensor(..., requires_grad=True)``, which silences "does not require
grad"; the policy never trains. Fix: keep the tensors (``saved_log_probs.append(log_prob)``)
and ``torch.stack`` them.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Categorical

torch.manual_seed(0)


class Policy(nn.Module):
    def __init__(self):
        super().__init__()
        self.affine1 = nn.Linear(4, 32)
        self.affine2 = nn.Linear(32, 2)
        self.saved_log_probs, self.rewards = [], []

    def forward(self, x):
        return F.softmax(self.affine2(F.relu(self.affine1(x))), dim=-1)


policy = Policy()
optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)


def select_action(state):
    m = Categorical(policy(state))
    action = m.sample()
    policy.saved_log_probs.append(m.log_prob(action).item())  # doctor: graph-break
    return action.item()


def finish_episode(gamma=0.99):
    returns = torch.tensor([sum(r * gamma**k for k, r in enumerate(policy.rewards[t:])) for t in range(10)])
    returns = (returns - returns.mean()) / (returns.std() + 1e-6)
    log_probs = torch.tensor(policy.saved_log_probs, requires_grad=True)  # doctor: requires-grad-bandaid
    policy_loss = (-log_probs * returns).sum()
    optimizer.zero_grad()
    policy_loss.backward()
    optimizer.step()
    del policy.rewards[:], policy.saved_log_probs[:]


for _ in range(6):
    state = torch.randn(4)
    for _ in range(10):
        action = select_action(state)
        policy.rewards.append(1.0 if action == int(state[0] > 0) else 0.0)
        state = torch.randn(4)
    finish_episode()
