"""BYOL / mean-teacher style self-distillation: a student predicts a teacher's embedding.

Clean: the teacher branch is a deliberate stop-gradient (computed under ``no_grad`` and
detached), its parameters have ``requires_grad=False``, and it is updated as an exponential
moving average of the student.
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


def train(steps=5, momentum=0.99):
    student = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    predictor = nn.Linear(8, 8)
    teacher = copy.deepcopy(student).requires_grad_(False)
    optimizer = torch.optim.SGD([*student.parameters(), *predictor.parameters()], lr=0.05)
    images = torch.randn(64, 16)
    for _ in range(steps):
        view_a = images + 0.1 * torch.randn_like(images)
        view_b = images + 0.1 * torch.randn_like(images)
        online = F.normalize(predictor(student(view_a)), dim=1)
        with torch.no_grad():
            target = F.normalize(teacher(view_b), dim=1)
        loss = (2 - 2 * (online * target.detach()).sum(dim=1)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
                t.lerp_(s, 1 - momentum)
    return loss


if __name__ == "__main__":
    print(f"loss {train().item():.4f}")
