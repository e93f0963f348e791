"""Attention utilities shared by the sequence examples."""

import torch


def zero_padded_keys(weights: torch.Tensor, key_padding: torch.Tensor) -> torch.Tensor:
    """Zero the attention ``weights: (B, T, T)`` on padded keys ``key_padding: (B, T)``."""
    weights.masked_fill_(key_padding.unsqueeze(1), 0.0)  # doctor: inplace-modification
    return weights
