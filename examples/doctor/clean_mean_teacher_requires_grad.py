"""Mean-teacher semi-supervised learning: a consistency loss against an EMA teacher.

Clean: the teacher is ``copy.deepcopy(student)`` and was never frozen, so its parameters
still have ``requires_grad=True``; but its forward runs under ``torch.no_grad()`` on
purpose (a stop-gradient target), it is in no optimizer, and it is updated only by the
exponential moving average ``t.mul_(m).add_(s.detach(), alpha=1 - m)`` under ``no_grad``.
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class Classifier(nn.Module):
    def __init__(self, in_features=12, hidden=32, num_classes=4):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


def ema_update(teacher, student, momentum):
    with torch.no_grad():
        for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
            t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)


def train(steps=5, momentum=0.99, consistency_weight=1.0):
    student = Classifier()
    teacher = copy.deepcopy(student)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    labeled_x = torch.randn(32, 12)
    labeled_y = labeled_x[:, :4].argmax(dim=1)
    unlabeled_x = torch.randn(128, 12)
    for _ in range(steps):
        noisy = unlabeled_x + 0.1 * torch.randn_like(unlabeled_x)
        student_probs = F.softmax(student(noisy), dim=1)
        with torch.no_grad():
            teacher_probs = F.softmax(teacher(unlabeled_x + 0.1 * torch.randn_like(unlabeled_x)), dim=1)
        consistency = F.mse_loss(student_probs, teacher_probs)
        loss = F.cross_entropy(student(labeled_x), labeled_y) + consistency_weight * consistency
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema_update(teacher, student, momentum)
    return loss


if __name__ == "__main__":
    print(f"loss {train().item():.4f}")
