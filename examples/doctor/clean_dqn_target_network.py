"""A DQN update on a batch of synthetic transitions, with a target network synced by copying.

Clean: the bootstrap target is computed by ``target_net`` under ``detach()``; that network
is deliberately not in the optimizer and is updated with ``load_state_dict``.
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)

q_net = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2))
target_net = copy.deepcopy(q_net)
optimizer = torch.optim.Adam(q_net.parameters(), lr=1e-3)
gamma = 0.99

states = torch.randn(64, 4)
actions = torch.randint(0, 2, (64,))
rewards = torch.randn(64)
next_states = torch.randn(64, 4)
done = torch.rand(64) < 0.1

for step in range(6):
    q_values = q_net(states).gather(1, actions.unsqueeze(1)).squeeze(1)
    next_q = target_net(next_states).max(dim=1).values.detach()
    target = rewards + gamma * next_q * (~done).float()
    loss = F.smooth_l1_loss(q_values, target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 2 == 1:
        target_net.load_state_dict(q_net.state_dict())

print(f"td loss {loss.item():.4f}")
