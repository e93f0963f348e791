"""The torch path of the hard-decision hot paths: the CPU implementation and the reference
every kernel is tested against.

A decision is made in the arithmetic dtype (float32, or float64 for float64 input) on
``logits + G``, where the Gumbel noise ``G`` is computed from the random bits the op drew
(:func:`gradwise.ops._noise.gumbel_from_bits`): both paths draw the same bits, so a
``generator`` gives the same sample on both. The torch path turns the bits into ``G`` once
and keeps ``G`` for backward; the kernels keep the bits and recompute ``G`` in registers.

Ties: the top-``k`` is the ``k`` largest values, NaN ranked highest, and among equal values
the lowest indices (for ``k = 1`` this is ``torch.argmax``). ``torch.topk`` breaks ties in no
documented order, so when a tie straddles the ``k``-th place the tied values are taken in
index order; this keeps the reference equal to the kernels' rule at the cost of one comparison
pass (and a few more, branch-free, under vmap and torch.compile).
"""

from __future__ import annotations

import torch

from gradwise.ops import _noise


def perturbed(logits: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    """``logits`` in the arithmetic dtype, plus ``noise``: the Gumbel noise itself (floating:
    the torch path computes it once and keeps it for backward, no bigger than its bits), or
    the int32 random bits it is made from (as the kernels take it)."""
    z = logits.to(_noise.compute_dtype(logits.dtype))
    if noise is None:
        return z
    return z + (noise if noise.is_floating_point() else _noise.gumbel_from_bits(noise, z.dtype))


def _marks(top: torch.Tensor) -> torch.Tensor:
    # a chosen NaN is written as NaN (it shows downstream); a chosen -inf (a row with fewer
    # finite values than k) as 0
    return torch.where(torch.isnan(top), top, (top > float("-inf")).to(top.dtype))


def _traced(z: torch.Tensor) -> bool:
    """Whether ``z`` is traced (torch.compile) or wrapped by vmap/grad: no data-dependent branch then."""
    return torch.compiler.is_compiling() or torch._C._functorch.is_functorch_wrapped_tensor(z)


def _nan_aware_equal(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a == b) | (torch.isnan(a) & torch.isnan(b))


def khot(z: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """{0, 1} tensor with ones at the top-``k`` of ``z`` along ``dim`` (ties to the lowest
    index); classes at ``-inf`` are never chosen; a chosen NaN is written as NaN."""
    if k == 1:
        index = z.argmax(dim, keepdim=True)  # the first maximum; NaN ranks highest
        return torch.zeros_like(z).scatter(dim, index, _marks(z.gather(dim, index)))
    top = z.topk(k, dim)
    kth = top.values.narrow(dim, k - 1, 1)
    if not _traced(z):
        # Does a tie straddle the k-th place (then torch.topk's choice among the tied is
        # unspecified)? It does when more than k values are >= the k-th one. NaN ranks highest:
        # when the k-th is a number, every NaN of the row is among the top k, so they are counted there.
        at_least = (z >= kth).sum(dim, keepdim=True) + torch.isnan(top.values).sum(dim, keepdim=True)
        if not bool(((at_least > k) | torch.isnan(kth)).any()):
            return torch.zeros_like(z).scatter(dim, top.indices, _marks(top.values))
    # everything above the k-th value (NaN is above every number), then the first tied ones
    same = _nan_aware_equal(z, kth)
    above = (z > kth) | (torch.isnan(z) & ~torch.isnan(kth))
    room = k - above.sum(dim, keepdim=True)
    chosen = above | (same & (same.cumsum(dim) <= room))
    return torch.where(chosen, _marks(z), 0.0)


def hard_forward(logits: torch.Tensor, noise: torch.Tensor | None, k: int, dim: int) -> torch.Tensor:
    """The k-hot of the top-``k`` of ``logits (+ noise)`` along ``dim``, in ``logits``' dtype."""
    return khot(perturbed(logits, noise), k, dim).to(logits.dtype)
