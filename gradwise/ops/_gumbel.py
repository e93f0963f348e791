"""Sampling ops: categorical one-hot samples, Gumbel-softmax, Gumbel-top-k."""

from __future__ import annotations

import warnings

import torch

from gradwise import _validate as v
from gradwise._frames import user_stacklevel
from gradwise.ops import _noise
from gradwise.ops._estimators import hard_choice, softmax


def sample_onehot(
    logits: torch.Tensor,
    dim: int = -1,
    *,
    estimator: str = "gumbel",
    tau=1.0,
    generator: torch.Generator | None = None,
    rao_samples: int | None = None,
) -> torch.Tensor:
    """A one-hot sample from ``Categorical(softmax(logits))`` along ``dim``, with a surrogate gradient.

    The sample is drawn by the Gumbel-max trick, ``argmax(logits + G)``, so its
    distribution is exactly the softmax (``tau`` does not change it). The backward
    pass uses ``estimator``: by default ``"gumbel"``, the gradient of
    ``softmax((logits + G) / tau)`` with the same noise ``G`` (straight-through
    Gumbel-softmax); ``"reinmax"`` and ``"gumbel-rao"`` are lower-variance choices.

    Args:
        logits: ``(..., C, ...)`` floating tensor (unnormalised log-probabilities along
            ``dim``). Classes at ``-inf`` are never sampled; a row with no finite logit
            gives a row of zeros and no gradient.
        dim: the class dimension.
        estimator: any name in :data:`gradwise.ops.ESTIMATORS`.
        tau: temperature of the surrogate (a positive float, or a tensor broadcasting to
            ``logits`` with size 1 along ``dim``).
        generator: a ``torch.Generator`` on the device of ``logits`` for reproducible samples.
        rao_samples: the number K of conditional Gumbels of ``estimator="gumbel-rao"``
            (default 10); they are drawn in backward, from ``generator`` when given.

    Returns:
        A one-hot tensor of the shape, dtype and device of ``logits``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> logits = torch.tensor([0.0, 0.0, -float("inf")])
        >>> torch.stack([sample_onehot(logits, generator=g) for _ in range(1000)]).mean(0)
        tensor([0.5160, 0.4840, 0.0000])
    """
    return hard_choice(
        "sample_onehot",
        logits,
        k=1,
        dim=dim,
        estimator=estimator,
        tau=tau,
        sampling=True,
        generator=generator,
        rao_samples=rao_samples,
    )


def gumbel_topk(
    logits: torch.Tensor,
    k: int,
    dim: int = -1,
    *,
    estimator: str = "softmax",
    tau=1.0,
    generator: torch.Generator | None = None,
    rao_samples: int | None = None,
) -> torch.Tensor:
    """A k-hot sample of ``k`` classes drawn without replacement (Gumbel-top-k, Kool et al. 2019).

    The set is the top-``k`` of ``logits + G`` with ``G ~ Gumbel(0, 1)``: the same as
    drawing ``k`` times from the softmax, each time removing the class drawn. The
    backward applies the estimator to ``D / k`` and scales by ``k`` (see
    :func:`topk_mask`): ``"softmax"`` is the gradient of ``k * softmax(logits / tau)``,
    ``"gumbel"`` that of ``k * softmax((logits + G) / tau)``, ``"gumbel-rao"`` averages
    the latter over Gumbels drawn conditionally on the ordered sample.

    Args:
        logits: ``(..., C, ...)`` floating tensor. Classes at ``-inf`` are never chosen:
            a row with fewer than ``k`` finite logits gets fewer than ``k`` ones.
        k: the sample size, ``1 <= k <= logits.shape[dim]``.
        dim: the class dimension.
        estimator: any name in :data:`gradwise.ops.ESTIMATORS`.
        tau: temperature of the surrogate.
        generator: a ``torch.Generator`` on the device of ``logits``.
        rao_samples: K for ``estimator="gumbel-rao"`` (default 10).

    Returns:
        A {0, 1} tensor like ``logits`` with ``k`` ones along ``dim``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> gumbel_topk(torch.tensor([5.0, 5.0, -5.0, 5.0]), k=3, generator=g)
        tensor([1., 1., 0., 1.])
    """
    return hard_choice(
        "gumbel_topk",
        logits,
        k=k,
        dim=dim,
        estimator=estimator,
        tau=tau,
        sampling=True,
        generator=generator,
        rao_samples=rao_samples,
    )


def gumbel_softmax(
    logits: torch.Tensor,
    tau=1.0,
    hard: bool = False,
    eps: float = 1e-10,
    dim: int = -1,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Drop-in for ``torch.nn.functional.gumbel_softmax``, plus ``generator``.

    The signature is PyTorch's (``gumbel_softmax(logits, 2.0, True)`` works); ``eps`` is
    accepted and has no effect, with PyTorch's deprecation warning when it is not the
    default; a 0-d ``logits`` (one class) gives ``1.0`` with a zero gradient, as PyTorch's.

    ``softmax((logits + G) / tau)`` with ``G ~ Gumbel(0, 1)``. With ``hard=True`` the
    forward value is the exact one-hot of its argmax (PyTorch's ``y_hard - y_soft.detach()
    + y_soft`` is one-hot only up to rounding) and the gradient is that of the soft
    sample: :func:`sample_onehot` with ``estimator="gumbel"``.

    Unlike PyTorch's, the noise is never infinite, half-precision inputs are computed in
    float32, and a row whose logits are all ``-inf`` gives zeros instead of NaN.

    Args:
        logits: ``(..., C, ...)`` floating tensor.
        tau: a positive float, or a positive tensor broadcasting to ``logits`` with size 1
            along ``dim``; it receives a gradient when it requires one.
        hard: return the one-hot of the sample instead of the relaxed sample.
        eps: deprecated in PyTorch and ignored (the noise here is never infinite).
        dim: the class dimension.
        generator: a ``torch.Generator`` on the device of ``logits``.

    Returns:
        A tensor like ``logits``: a point of the simplex along ``dim``, or a one-hot.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, -float("inf")]])
        >>> y = gumbel_softmax(logits, tau=2.0, generator=g)
        >>> torch.allclose(y.sum(-1), torch.ones(2)), y[1, 2].item()
        (True, 0.0)
        >>> gumbel_softmax(logits, hard=True, generator=g)
        tensor([[0., 0., 1.],
                [0., 1., 0.]])
    """
    api = "gumbel_softmax"
    if not isinstance(hard, bool):
        raise v.ArgumentTypeError(f"{api}: hard must be a bool (got {type(hard).__name__}: {v.describe(hard)})")
    if isinstance(eps, bool) or not isinstance(eps, int | float):
        raise v.ArgumentTypeError(f"{api}: eps must be a number (got {type(eps).__name__}: {v.describe(eps)})")
    if eps != 1e-10:
        warnings.warn("`eps` parameter is deprecated and has no effect.", UserWarning, stacklevel=user_stacklevel())
    if isinstance(logits, torch.Tensor) and logits.dim() == 0:  # one class: PyTorch gives 1.0
        if isinstance(dim, bool) or not isinstance(dim, int) or dim not in (-1, 0):
            raise v.ArgumentError(f"{api}: dim must be -1 or 0 for a 0-d logits (got {v.describe(dim)})")
        return gumbel_softmax(logits.unsqueeze(0), tau, hard, dim=0, generator=generator).squeeze(0)
    if hard:
        return hard_choice(api, logits, k=1, dim=dim, estimator="gumbel", tau=tau, sampling=True, generator=generator)
    logits = v.floating_tensor(api, "logits", logits, min_ndim=1)
    dim = v.dim(api, dim, logits.dim())
    tau = v.temperature(api, tau, logits, dim)
    generator = v.generator(api, generator, logits.device)
    dtype = _noise.compute_dtype(logits.dtype)
    noise = _noise.gumbel(logits.shape, dtype=dtype, device=logits.device, generator=generator)
    if isinstance(tau, torch.Tensor):
        tau = tau.to(dtype)
    return softmax((logits.to(dtype) + noise) / tau, dim).to(logits.dtype)
