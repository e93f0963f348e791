"""A GCN with learnable edge weights on a fixed graph (plain torch, dense adjacency).

Broken: the normalised adjacency, which depends on the learnable ``edge_logits``, is
computed once by a helper before the loop, so the second backward goes through the first
step's freed graph. Fix: compute it inside the loop (or in ``forward``).
"""
# expect-exit: RuntimeError: Trying to backward through the graph a second time

import torch
import torch.nn.functional as F
from torch import nn


def normalize_adj(adjacency):
    adjacency = adjacency + torch.eye(adjacency.size(0))
    d = adjacency.sum(1).pow(-0.5)
    return d[:, None] * adjacency * d[None, :]


class EdgeWeightedGCN(nn.Module):
    def __init__(self, n_nodes, fin, hid, nclass):
        super().__init__()
        self.edge_logits = nn.Parameter(torch.zeros(n_nodes, n_nodes))
        self.lin1 = nn.Linear(fin, hid)
        self.lin2 = nn.Linear(hid, nclass)

    def forward(self, x, adj_norm):
        h = F.relu(adj_norm @ self.lin1(x))
        return adj_norm @ self.lin2(h)


def run():
    torch.manual_seed(0)
    n, fin, c = 80, 8, 3
    y = torch.randint(0, c, (n,))
    a = (torch.rand(n, n) < torch.where(y[:, None] == y[None], 0.2, 0.02)).float()
    a = torch.triu(a, 1)
    a = a + a.t()
    x = torch.randn(n, fin) + F.one_hot(y, c).float().repeat(1, 3)[:, :fin]
    model = EdgeWeightedGCN(n, fin, 32, c)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    adj_norm = normalize_adj(a * torch.sigmoid(model.edge_logits))  # doctor: stale-graph
    for _ in range(6):
        opt.zero_grad()
        loss = F.cross_entropy(model(x, adj_norm), y)
        loss.backward()
        opt.step()


if __name__ == "__main__":
    run()
