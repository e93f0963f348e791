"""REINFORCE on a toy bandit: a policy network picks one of four arms; the learning-rate
schedule is stepped after every episode.

Broken: the loop calls ``optimizer.step()`` a second time where it meant ``scheduler.step()``,
so each gradient is applied twice (with Adam's moments updated twice). Fix: call
``scheduler.step()`` there.
"""

import torch
from torch import nn
from torch.distributions import Categorical

torch.manual_seed(0)

policy = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 4))
optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.5)
arm_means = torch.tensor([0.1, 0.5, 0.2, 0.9])


def train(episodes: int = 5) -> None:
    for _episode in range(episodes):
        states = torch.randn(32, 6)
        dist = Categorical(logits=policy(states))
        actions = dist.sample()
        rewards = arm_means[actions] + 0.1 * torch.randn(32)
        advantage = rewards - rewards.mean()
        loss = -(dist.log_prob(actions) * advantage).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        optimizer.step()  # doctor: step-without-gradient
    print(f"last mean reward {rewards.mean().item():.3f}")


if __name__ == "__main__":
    train()
