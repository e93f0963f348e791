"""Multi-task regression and classification, the task losses weighted by learned
homoscedastic uncertainties (Kendall et al. 2018) held by the criterion module.

Broken: the optimizer gets ``net.parameters()`` only; the criterion's ``log_vars`` get a
gradient every step and stay at zero. Fix:
``Adam([*net.parameters(), *criterion.parameters()])``.
"""

import torch
import torch.nn.functional as F
from torch import nn


class MultiTaskNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.reg_head = nn.Linear(64, 1)
        self.cls_head = nn.Linear(64, 3)

    def forward(self, x):
        h = self.trunk(x)
        return self.reg_head(h).squeeze(-1), self.cls_head(h)


class UncertaintyLoss(nn.Module):
    def __init__(self, n_tasks=2):
        super().__init__()
        self.log_vars = nn.Parameter(torch.zeros(n_tasks))

    def forward(self, losses):
        precision = torch.exp(-self.log_vars)
        return (precision * torch.stack(losses) + self.log_vars).sum()


def main():
    torch.manual_seed(0)
    x = torch.randn(400, 12)
    y_reg = x[:, 0] * 3 + 0.5 * torch.randn(400)
    y_cls = x[:, 1:4].argmax(1)
    net, criterion = MultiTaskNet(), UncertaintyLoss()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)  # doctor: parameter-not-optimized
    for _ in range(2):
        for i in range(0, 400, 100):
            reg, cls = net(x[i : i + 100])
            loss = criterion([F.mse_loss(reg, y_reg[i : i + 100]), F.cross_entropy(cls, y_cls[i : i + 100])])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


if __name__ == "__main__":
    main()
