"""Fine-tuning with frozen BatchNorm statistics, and a linear probe on a frozen backbone.

Clean: the fine-tuned model is in train mode and only its BatchNorm layers are put in eval
mode, one by one, on purpose (small batches must not overwrite the pretrained statistics);
the probe's backbone is frozen and kept in eval mode while only the head (no dropout or
BatchNorm of its own) trains; an MLP without mode-dependent modules is left in eval mode
(no effect).
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


def freeze_bn(module):
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


net = nn.Sequential(
    nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)
)
backbone = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5)).requires_grad_(False)
probe = nn.Linear(16, 2)
plain = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
optimizer = torch.optim.SGD([*net.parameters(), *probe.parameters(), *plain.parameters()], lr=0.01)
images, features, labels = torch.randn(4, 3, 8, 8), torch.randn(16, 6), torch.randint(0, 2, (16,))
net.train()
freeze_bn(net)
backbone.eval()
for _ in range(4):
    loss = F.cross_entropy(net(images), labels[:4])
    loss = loss + F.cross_entropy(probe(backbone(features)), labels) + F.cross_entropy(plain(features), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"loss {loss.item():.3f}")
