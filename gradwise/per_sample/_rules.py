"""One rule per layer type: per-sample gradient norms (and, where needed, the gradients) of a
layer's own parameters from its input ``a`` and the gradient ``g`` at its output.

``a`` and ``g`` are batch-first, one sample per row of dimension 0. Each rule gives:

- ``sq_norms(m, a, g) -> {local name: (B,)}``: squared norms, without materialising
  per-sample gradients where the layer allows it;
- ``materialize(m, a, g) -> {local name: (B, *param.shape)}``: the per-sample gradients,
  used when a parameter receives several contributions (a layer called twice, tied weights).

A rule applies only to a module whose ``forward`` is the stock one of its class (a
subclass that overrides ``forward`` falls back to the exact method).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

Grads = dict[str, torch.Tensor]
# elements of one chunk of materialised per-sample gradients (4 MiB in float32): bounds the extra memory
_CHUNK_ELEMENTS = 1 << 20


def _sq(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).square().sum(1)


# --- Linear ------------------------------------------------------------------------------


def _linear_parts(m: nn.Linear, a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    batch = a.shape[0]
    return a.reshape(batch, -1, m.in_features), g.reshape(batch, -1, m.out_features)


def use_ghost(steps: int, fan_in: int, fan_out: int) -> bool:
    """Ghost norm (two T x T Gram matrices) when cheaper than materialising G^T A per sample.

    Ghost costs about ``T^2 (fan_in + fan_out)`` multiply-adds and ``T^2`` memory per sample;
    materialising costs ``T fan_in fan_out`` and ``fan_in fan_out``.
    """
    return steps * (fan_in + fan_out) <= fan_in * fan_out


def _linear_sq_norms(m: nn.Linear, a: torch.Tensor, g: torch.Tensor) -> Grads:
    A, G = _linear_parts(m, a, g)
    out: Grads = {}
    if m.weight.requires_grad:
        steps = A.shape[1]
        if steps == 1:
            out["weight"] = _sq(A) * _sq(G)
        elif use_ghost(steps, m.in_features, m.out_features):
            out["weight"] = ((G @ G.transpose(1, 2)) * (A @ A.transpose(1, 2))).sum((1, 2))
        else:
            chunk = max(1, _CHUNK_ELEMENTS // (m.in_features * m.out_features))
            out["weight"] = torch.cat(
                [_sq(Gc.transpose(1, 2) @ Ac) for Gc, Ac in zip(G.split(chunk), A.split(chunk), strict=True)]
            )
    if m.bias is not None and m.bias.requires_grad:
        out["bias"] = _sq(G.sum(1))
    return out


def _linear_materialize(m: nn.Linear, a: torch.Tensor, g: torch.Tensor) -> Grads:
    A, G = _linear_parts(m, a, g)
    out: Grads = {"weight": G.transpose(1, 2) @ A}
    if m.bias is not None:
        out["bias"] = G.sum(1)
    return out


# --- Conv1d / Conv2d ---------------------------------------------------------------------


def _conv_weight(m: nn.Conv1d | nn.Conv2d, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-sample weight gradients ``(B, C_out, C_in / groups, *k)`` with one grouped
    convolution in which every (sample, group) pair is a group."""
    batch = a.shape[0]
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
        a = F.pad(a, m._reversed_padding_repeated_twice, mode=mode)
        padding = 0
    else:
        padding = m.padding
    weight_fn = torch.nn.grad.conv1d_weight if isinstance(m, nn.Conv1d) else torch.nn.grad.conv2d_weight
    merged = weight_fn(
        a.reshape(1, batch * a.shape[1], *a.shape[2:]),
        (batch * m.out_channels, *m.weight.shape[1:]),
        g.reshape(1, batch * g.shape[1], *g.shape[2:]),
        stride=m.stride,
        padding=padding,
        dilation=m.dilation,
        groups=batch * m.groups,
    )
    return merged.reshape(batch, *m.weight.shape)


def _conv_chunks(m: nn.Conv1d | nn.Conv2d, a: torch.Tensor, g: torch.Tensor) -> int:
    return max(1, _CHUNK_ELEMENTS // m.weight.numel())


def _conv_sq_norms(m: nn.Conv1d | nn.Conv2d, a: torch.Tensor, g: torch.Tensor) -> Grads:
    out: Grads = {}
    if m.weight.requires_grad:
        chunk = _conv_chunks(m, a, g)
        out["weight"] = torch.cat(
            [_sq(_conv_weight(m, ac, gc)) for ac, gc in zip(a.split(chunk), g.split(chunk), strict=True)]
        )
    if m.bias is not None and m.bias.requires_grad:
        out["bias"] = _sq(g.reshape(g.shape[0], g.shape[1], -1).sum(-1))
    return out


def _conv_materialize(m: nn.Conv1d | nn.Conv2d, a: torch.Tensor, g: torch.Tensor) -> Grads:
    out: Grads = {"weight": _conv_weight(m, a, g)}
    if m.bias is not None:
        out["bias"] = g.reshape(g.shape[0], g.shape[1], -1).sum(-1)
    return out


# --- Embedding ---------------------------------------------------------------------------


def _embedding_parts(m: nn.Embedding, idx: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    batch = idx.shape[0]
    idx = idx.reshape(batch, -1)
    G = g.reshape(batch, -1, m.embedding_dim)
    if m.padding_idx is not None:
        G = G * (idx != m.padding_idx).unsqueeze(-1).to(G.dtype)
    return idx, G


def _embedding_sq_norms(m: nn.Embedding, idx: torch.Tensor, g: torch.Tensor) -> Grads:
    idx, G = _embedding_parts(m, idx, g)
    if idx.shape[1] == 1:
        return {"weight": _sq(G)}
    # ||sum_t onehot(i_t) g_t^T||^2 = sum_{t,s} [i_t == i_s] g_t . g_s (repeated indices add up)
    same = (idx.unsqueeze(2) == idx.unsqueeze(1)).to(G.dtype)
    return {"weight": ((G @ G.transpose(1, 2)) * same).sum((1, 2))}


def _embedding_materialize(m: nn.Embedding, idx: torch.Tensor, g: torch.Tensor) -> Grads:
    idx, G = _embedding_parts(m, idx, g)
    batch = idx.shape[0]
    rows = (idx + m.num_embeddings * torch.arange(batch, device=idx.device).unsqueeze(1)).reshape(-1)
    out = G.new_zeros(batch * m.num_embeddings, m.embedding_dim).index_add_(0, rows, G.reshape(-1, m.embedding_dim))
    return {"weight": out.reshape(batch, m.num_embeddings, m.embedding_dim)}


# --- normalisation layers: affine parameters -----------------------------------------------


def _normalized(m: nn.Module, a: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The normalised input (before the affine map) and the dims summed per sample."""
    if isinstance(m, nn.LayerNorm):
        x = F.layer_norm(a, m.normalized_shape, None, None, m.eps)
        return x, tuple(range(1, a.dim() - len(m.normalized_shape)))
    if isinstance(m, nn.RMSNorm):
        x = F.rms_norm(a, m.normalized_shape, None, m.eps)
        return x, tuple(range(1, a.dim() - len(m.normalized_shape)))
    if isinstance(m, nn.GroupNorm):
        return F.group_norm(a, m.num_groups, None, None, m.eps), tuple(range(2, a.dim()))
    # BatchNorm in eval mode: running statistics (training mode is refused before any work)
    shape = (1, -1) + (1,) * (a.dim() - 2)
    x = (a - m.running_mean.reshape(shape)) * torch.rsqrt(m.running_var.reshape(shape) + m.eps)
    return x, tuple(range(2, a.dim()))


def _norm_materialize(m: nn.Module, a: torch.Tensor, g: torch.Tensor) -> Grads:
    out: Grads = {}
    x, dims = _normalized(m, a.detach())
    weight, bias = getattr(m, "weight", None), getattr(m, "bias", None)
    if weight is not None:
        out["weight"] = (g * x).sum(dims) if dims else g * x
    if bias is not None:
        out["bias"] = g.sum(dims) if dims else g
    return out


def _norm_sq_norms(m: nn.Module, a: torch.Tensor, g: torch.Tensor) -> Grads:
    # the per-sample gradients of an affine norm are as small as the parameter: materialise
    return {name: _sq(grad) for name, grad in _norm_materialize(m, a, g).items() if getattr(m, name).requires_grad}


# --- registry ----------------------------------------------------------------------------

Rule = tuple[
    Callable[[nn.Module, torch.Tensor, torch.Tensor], Grads], Callable[[nn.Module, torch.Tensor, torch.Tensor], Grads]
]

RULES: dict[type, Rule] = {
    nn.Linear: (_linear_sq_norms, _linear_materialize),
    nn.Conv1d: (_conv_sq_norms, _conv_materialize),
    nn.Conv2d: (_conv_sq_norms, _conv_materialize),
    nn.Embedding: (_embedding_sq_norms, _embedding_materialize),
    nn.LayerNorm: (_norm_sq_norms, _norm_materialize),
    nn.RMSNorm: (_norm_sq_norms, _norm_materialize),
    nn.GroupNorm: (_norm_sq_norms, _norm_materialize),
    nn.BatchNorm1d: (_norm_sq_norms, _norm_materialize),
    nn.BatchNorm2d: (_norm_sq_norms, _norm_materialize),
    nn.BatchNorm3d: (_norm_sq_norms, _norm_materialize),
}


def rule_for(m: nn.Module) -> Rule | None:
    """The rule of a module whose forward is its class's stock forward, else ``None``."""
    for cls in type(m).__mro__:
        if cls in RULES:
            if type(m).forward is not cls.forward:
                return None
            if isinstance(m, nn.Embedding) and m.scale_grad_by_freq:
                return None  # frequencies are counted over the batch: not a per-sample quantity
            return RULES[cls]
    return None
