"""A two-layer GCN whose first propagation, thought to depend on fixed inputs only, is
computed under ``torch.no_grad()`` in a helper method; the layer it calls is the user's own.

Broken: ``gc1``'s weights are used inside the ``no_grad`` block, so they never get a
gradient. Fix: drop the ``no_grad`` (it is for evaluation only).
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class GraphConv(nn.Module):
    def __init__(self, fin, fout):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fin, fout) * fin**-0.5)
        self.bias = nn.Parameter(torch.zeros(fout))

    def forward(self, x, adj):
        return adj @ (x @ self.weight) + self.bias


class GCN(nn.Module):
    def __init__(self, fin=16, hid=32, nclass=4):
        super().__init__()
        self.gc1 = GraphConv(fin, hid)
        self.gc2 = GraphConv(hid, nclass)

    def propagate_input(self, x, adj):
        with torch.no_grad():
            h = self.gc1(x, adj)  # doctor: graph-break
        return h

    def forward(self, x, adj):
        h = F.relu(self.propagate_input(x, adj))
        return F.log_softmax(self.gc2(h, adj), dim=1)


n = 60
labels = torch.randint(0, 4, (n,))
features = torch.randn(n, 16) + F.one_hot(labels, 4).float().repeat(1, 4)
a = (torch.rand(n, n) < 0.1).float()
a_hat = (a + a.t() + torch.eye(n)).clamp(max=1)
a_hat = a_hat / a_hat.sum(1, keepdim=True)
model = GCN()
optimizer = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)
for _ in range(6):
    optimizer.zero_grad()
    loss = F.nll_loss(model(features, a_hat), labels)
    loss.backward()
    optimizer.step()
