"""Pooling utilities shared by the text-classification examples."""

import torch


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average ``hidden: (B, T, D)`` over the positions where ``mask: (B, T)`` is true."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    total = (hidden * weights).sum(dim=1)
    counts = weights.sum(dim=1).clamp(min=1)
    return (total / counts).detach()  # doctor: graph-break
