"""Linear regression fitted with plain tensors and ``torch.optim.SGD``.

Broken: gradients are never zeroed, so ``w.grad`` and ``b.grad`` accumulate over steps.
Fix: call ``optimizer.zero_grad()`` at the start of each step.
"""

import torch

torch.manual_seed(0)


def train(steps=5):
    x = torch.randn(100, 3)
    y = x @ torch.tensor([1.5, -0.5, 2.0]) + 0.3
    w = torch.zeros(3, requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.SGD([w, b], lr=0.05)
    for _ in range(steps):
        loss = ((x @ w + b - y) ** 2).mean()
        loss.backward()
        optimizer.step()  # doctor: missing-zero-grad
    return loss


if __name__ == "__main__":
    print(f"mse {train().item():.4f}")
