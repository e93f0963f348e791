"""DQN on a toy chain environment; the target network is a ``copy.deepcopy`` of the
online network, synced by ``load_state_dict`` every few steps, and only the online network
is in the optimizer. The bootstrap target is computed without ``no_grad`` (sloppy but
correct: the target network's unused gradients change nothing).
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
q_net = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2))
target_net = copy.deepcopy(q_net)
optimizer = torch.optim.Adam(q_net.parameters(), lr=1e-3)
gamma = 0.9
for step in range(8):
    states, next_states = torch.randn(32, 4), torch.randn(32, 4)
    actions, rewards = torch.randint(0, 2, (32,)), torch.randn(32)
    q = q_net(states).gather(1, actions[:, None]).squeeze(1)
    target = rewards + gamma * target_net(next_states).max(1).values
    loss = F.smooth_l1_loss(q, target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 4 == 3:
        target_net.load_state_dict(q_net.state_dict())
