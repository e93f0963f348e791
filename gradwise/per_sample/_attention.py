"""``nn.MultiheadAttention`` (self-attention) with its projections visible to the Linear rule.

``nn.MultiheadAttention`` reads its weights inside ``F.multi_head_attention_forward``, on
sequence-first tensors with the batch folded into other dimensions, so no hook sees a
per-sample layer input. While the norms are computed, a supported instance runs this
forward instead (same math: packed input projection, scaled dot-product attention with
the same merged float mask, output projection), which records the input projection as a
Linear layer and calls ``out_proj`` as a module. Anything else (cross-attention, separate
q/k/v weights, ``bias_k``, ``add_zero_attn``, ``is_causal`` without a mask) runs the
original forward and its parameters go to the exact fallback.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from gradwise.per_sample._capture import Capture


class Projection:
    """The packed input projection of an attention layer, shaped like an ``nn.Linear`` for its rule."""

    def __init__(self, attention: nn.MultiheadAttention):
        self.weight = attention.in_proj_weight
        self.bias = attention.in_proj_bias
        self.out_features, self.in_features = self.weight.shape

    def named_parameters(self, recurse: bool = False):
        yield "weight", self.weight
        if self.bias is not None:
            yield "bias", self.bias

    def parameters(self, recurse: bool = False):
        for _, p in self.named_parameters():
            yield p


def supported(m: nn.MultiheadAttention) -> bool:
    return (
        type(m).forward is nn.MultiheadAttention.forward
        and m._qkv_same_embed_dim
        and m.in_proj_weight is not None
        and m.bias_k is None
        and m.bias_v is None
        and not m.add_zero_attn
        and type(m.out_proj).forward is nn.Linear.forward
    )


def forward(
    capture: Capture,
    m: nn.MultiheadAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    need_weights: bool = True,
    attn_mask: torch.Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[torch.Tensor, Any]:
    if query is not key or key is not value or query.dim() != 3 or (is_causal and attn_mask is None):
        capture.foreign.update(id(p) for p in m.parameters())
        return nn.MultiheadAttention.forward(
            m, query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal
        )
    x = query if m.batch_first else query.transpose(0, 1)  # (B, L, E)
    batch, length, embed = x.shape
    heads, head_dim = m.num_heads, embed // m.num_heads
    key_padding_mask = F._canonical_mask(
        mask=key_padding_mask,
        mask_name="key_padding_mask",
        other_type=F._none_or_dtype(attn_mask),
        other_name="attn_mask",
        target_type=x.dtype,
    )
    attn_mask = F._canonical_mask(
        mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="", target_type=x.dtype, check_other=False
    )
    mask = None
    if attn_mask is not None:
        mask = attn_mask if attn_mask.dim() == 2 else attn_mask.view(batch, heads, length, length)
    if key_padding_mask is not None:
        padding = key_padding_mask.view(batch, 1, 1, length)
        mask = padding if mask is None else mask + padding

    projection = Projection(m)
    qkv = F.linear(x, projection.weight, projection.bias)
    capture.record(projection, x, qkv)
    q, k, v = (t.reshape(batch, length, heads, head_dim).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
    dropout = m.dropout if m.training else 0.0
    weights = None
    if need_weights:
        scores = (q * math.sqrt(1.0 / head_dim)) @ k.transpose(-2, -1)
        if mask is not None:
            scores = scores + mask
        weights = torch.softmax(scores, dim=-1)
        attended = F.dropout(weights, p=dropout) if dropout > 0 else weights
        out = attended @ v
        weights = weights.mean(1) if average_attn_weights else weights
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    out = m.out_proj(out.transpose(1, 2).reshape(batch, length, embed))
    return (out if m.batch_first else out.transpose(0, 1)), weights
