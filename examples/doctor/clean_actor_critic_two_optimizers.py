"""One-step advantage actor-critic on a synthetic contextual-bandit environment in torch.

Clean: the actor and the critic are separate networks with one optimizer each. The actor's
loss uses ``advantage.detach()`` (the critic is trained by its own loss, not by the policy
gradient); the reward comes from a comparison on the sampled action, which is data, not a
cut path; and the critic fits the reward with ``F.smooth_l1_loss``.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Categorical

torch.manual_seed(0)

n_features, n_actions = 6, 3


class Environment:
    """Each state secretly prefers one action; choosing it pays 1, anything else 0."""

    def __init__(self, batch_size=128):
        self.batch_size = batch_size
        self.mixing = torch.randn(n_features, n_actions)

    def reset(self):
        self.state = torch.randn(self.batch_size, n_features)
        return self.state

    def step(self, action):
        best = (self.state @ self.mixing).argmax(dim=1)
        return (action == best).float()


def train(episodes=5):
    env = Environment()
    actor = nn.Sequential(nn.Linear(n_features, 32), nn.Tanh(), nn.Linear(32, n_actions))
    critic = nn.Sequential(nn.Linear(n_features, 32), nn.Tanh(), nn.Linear(32, 1))
    actor_opt = torch.optim.Adam(actor.parameters(), lr=3e-3)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=1e-2)
    mean_reward = 0.0
    for _ in range(episodes):
        state = env.reset()
        dist = Categorical(logits=actor(state))
        action = dist.sample()
        reward = env.step(action)
        value = critic(state).squeeze(-1)
        advantage = reward - value

        actor_loss = -(dist.log_prob(action) * advantage.detach()).mean() - 0.01 * dist.entropy().mean()
        actor_opt.zero_grad()
        actor_loss.backward()
        actor_opt.step()

        critic_loss = F.smooth_l1_loss(value, reward)
        critic_opt.zero_grad()
        critic_loss.backward()
        critic_opt.step()
        mean_reward = reward.mean().item()
    return mean_reward


if __name__ == "__main__":
    print(f"mean reward {train():.3f}")
