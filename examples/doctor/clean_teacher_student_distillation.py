"""Knowledge distillation: a small student learns from a bigger frozen teacher.

Clean: the teacher (standing in for a pretrained network) is put in ``eval()`` mode and
frozen with ``requires_grad_(False)``, so it is deliberately in no optimizer. The student
loss is the usual ``F.kl_div(log_softmax(s / T), softmax(t / T), reduction="batchmean")``
(log-probabilities as input, probabilities as target) scaled by ``T * T``, plus
``F.cross_entropy`` on the labels.
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


def mlp(hidden, dropout=0.0):
    return nn.Sequential(nn.Linear(20, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 5))


def distillation_loss(student_logits, teacher_logits, labels, temperature=4.0, alpha=0.5):
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
    )
    hard = F.cross_entropy(student_logits, labels)
    return alpha * soft * temperature * temperature + (1 - alpha) * hard


teacher = mlp(128, dropout=0.2)
teacher.eval()
teacher.requires_grad_(False)

student = mlp(16)
optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
inputs = torch.randn(256, 20)
labels = inputs[:, :5].argmax(dim=1)

for _ in range(4):
    for x, y in zip(inputs.split(128), labels.split(128), strict=True):
        teacher_logits = teacher(x)
        loss = distillation_loss(student(x), teacher_logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

print(f"distillation loss {loss.item():.4f}")
