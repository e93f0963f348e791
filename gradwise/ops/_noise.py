"""Gumbel noise that is never infinite, and the conditional Gumbels of Gumbel-Rao.

Uniforms are drawn on a 2**23-point grid strictly inside (0, 1): every grid point is
exact in float32, so ``-log(U)`` is positive and finite and the Gumbel ``-log(-log U)``
lies in [-2.81, 16.6]. (``torch.rand`` can return 0, and ``torch.nn.functional.gumbel_softmax``
samples ``Exponential(1)``, which can round to 0; either gives an infinite Gumbel.)
Noise is drawn in float32 (float64 for float64 inputs) whatever the input dtype.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

_BITS = 23


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype arithmetic is done in: float32 for half types, else the input's own."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def bits(shape, *, device, generator=None) -> torch.Tensor:
    """Uniform random ``int32`` in ``[0, 2**23)``: what every noise of gradwise is made from."""
    return torch.randint(0, 2**_BITS, shape, generator=generator, device=device, dtype=torch.int32)


def exponential(shape, *, dtype, device, generator=None) -> torch.Tensor:
    """``Exponential(1)`` samples, positive and finite."""
    return exponential_from_bits(bits(shape, device=device, generator=generator), dtype)


def exponential_from_bits(bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``-log(U)`` for ``U = (bits + 1/2) / 2**23``, ``0 <= bits < 2**23``: U is exact in float32."""
    return -torch.log((bits.to(dtype) + 0.5) * 2.0**-_BITS)


def gumbel_from_bits(random_bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``-log(-log(U))``: the Gumbel of :func:`exponential_from_bits`'s ``U``. The kernels compute
    the same expression from the same bits."""
    return -torch.log(exponential_from_bits(random_bits, dtype))


def gumbel(shape, *, dtype, device, generator=None) -> torch.Tensor:
    """Standard ``Gumbel(0, 1)`` samples, finite."""
    return gumbel_from_bits(bits(shape, device=device, generator=generator), dtype)


def conditional_gumbels(
    logits: torch.Tensor, perturbed: torch.Tensor, k: int, dim: int, n: int, generator=None
) -> Iterator[torch.Tensor]:
    """``n`` draws of perturbed logits ``logits + G``, ``G ~ Gumbel``, conditioned on the
    top-``k`` of the result being, in order, the top-``k`` of ``perturbed``.

    Top-down construction (Maddison et al. 2014; Kool et al. 2019): the largest
    perturbed logit of a set is ``Gumbel(logsumexp(set))``; each next chosen one is
    the max of the remaining set truncated below the previous one; every class not
    chosen is ``Gumbel(logit)`` truncated below the k-th chosen value. A Gumbel with
    location ``mu`` truncated below ``b`` is ``-log(exp(-b) + exp(-mu) * E)``, ``E ~ Exp(1)``.
    The locations depend on the order only, so they are computed once for all draws.
    """
    order = perturbed.topk(k, dim).indices if k > 1 else perturbed.argmax(dim, keepdim=True)
    locations, remaining = [], logits
    for j in range(k):
        locations.append(torch.logsumexp(remaining, dim, keepdim=True))
        if j + 1 < k:
            remaining = remaining.scatter(dim, order.narrow(dim, j, 1), float("-inf"))
    opts = {"dtype": logits.dtype, "device": logits.device, "generator": generator}
    row_shape = locations[0].shape
    for _ in range(n):
        bound, chosen = None, []
        for location in locations:
            e = exponential(row_shape, **opts)
            # the first chosen value is untruncated: Gumbel(location) = location - log(E)
            bound = location - torch.log(e) if bound is None else _truncated_gumbel(location, bound, e)
            chosen.append(bound)
        rest = _truncated_gumbel(logits, bound, exponential(logits.shape, **opts))
        yield rest.scatter(dim, order, chosen[0] if k == 1 else torch.cat(chosen, dim))


def conditional_gumbel(logits, perturbed, k: int, dim: int, generator=None) -> torch.Tensor:
    """One draw of :func:`conditional_gumbels`."""
    return next(conditional_gumbels(logits, perturbed, k, dim, 1, generator))


def _truncated_gumbel(location: torch.Tensor, bound: torch.Tensor, exp_noise: torch.Tensor) -> torch.Tensor:
    # a class at -inf stays at -inf: logaddexp(x, inf) is inf, also for x = inf
    return -torch.logaddexp(-bound, torch.log(exp_noise) - location)
