"""Bias, spread and direction of each estimator against the exact gradient (by enumeration)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from gradwise import _validate as v
from gradwise.ops._estimators import ESTIMATORS
from gradwise.ops._gumbel import sample_onehot


@dataclass(frozen=True)
class EstimatorStats:
    """One estimator's gradient estimates against the exact gradient ``g``.

    Attributes:
        name: the estimator.
        bias: ``|| mean(estimates) - g ||``.
        relative_bias: ``bias / ||g||``.
        std: ``sqrt(mean ||estimate - mean(estimates)||^2)``, the total standard deviation.
        cosine: mean cosine similarity between an estimate and ``g``.
        mean: the mean estimate, shaped like the logits.
    """

    name: str
    bias: float
    relative_bias: float
    std: float
    cosine: float
    mean: torch.Tensor


@dataclass(frozen=True)
class EstimatorComparison:
    """What :func:`compare_estimators` returns: the exact gradient and one row per estimator."""

    exact: torch.Tensor
    stats: dict[str, EstimatorStats]
    n_samples: int

    def __str__(self) -> str:
        lines = [
            (
                f"gradient of E[f(D)] by enumeration: norm {self.exact.norm().item():.4g}; "
                f"{self.n_samples} samples per estimator"
            ),
            f"{'estimator':<12} {'bias':>10} {'rel. bias':>10} {'std':>10} {'cosine':>8}",
        ]
        for s in self.stats.values():
            lines.append(f"{s.name:<12} {s.bias:>10.4g} {s.relative_bias:>10.3f} {s.std:>10.4g} {s.cosine:>8.3f}")
        return "\n".join(lines)


def compare_estimators(
    f: Callable[[torch.Tensor], torch.Tensor],
    logits: torch.Tensor,
    estimators: Iterable[str] | None = None,
    n_samples: int = 1000,
    *,
    tau: float = 1.0,
    generator: torch.Generator | None = None,
    max_outcomes: int = 100_000,
) -> EstimatorComparison:
    """Compare gradient estimators with the exact gradient of ``E[f(D)]``, ``D ~ softmax(logits)``.

    The protocol of the ReinMax paper: for a problem small enough to enumerate, the
    exact gradient of ``E[f(D)] = sum_d p(d) f(d)`` w.r.t. ``logits`` is computed in
    float64 over every outcome ``d``; each estimator's gradients through
    :func:`sample_onehot` over ``n_samples`` samples give its bias, standard deviation
    and cosine similarity to it.

    Args:
        f: maps a one-hot sample ``D`` (shaped like ``logits``) to a scalar loss,
            differentiably in ``D``.
        logits: ``(C,)`` for one categorical variable or ``(N, C)`` for ``N`` independent
            ones (``C ** N`` outcomes are enumerated).
        estimators: names from :data:`gradwise.ops.ESTIMATORS` (default: all of them).
        n_samples: samples per estimator.
        tau: the estimators' temperature.
        generator: a CPU ``torch.Generator`` for reproducible samples.
        max_outcomes: refuse to enumerate more outcomes than this.

    Returns:
        An :class:`EstimatorComparison`; ``print`` it for a table.

    Raises:
        ArgumentError: when ``C ** N > max_outcomes``, or for invalid arguments.

    Example:
        >>> target = torch.tensor([0.1, 0.5, 0.4])
        >>> f = lambda d: ((d - target) ** 2).sum()
        >>> result = compare_estimators(f, torch.zeros(3), ["st", "reinmax"], n_samples=500,
        ...                             generator=torch.Generator().manual_seed(0))
        >>> result.stats["reinmax"].bias < result.stats["st"].bias
        True
    """
    api = "compare_estimators"
    if not callable(f):
        raise v.ArgumentTypeError(f"{api}: f must be callable (got {type(f).__name__})")
    logits = v.floating_tensor(api, "logits", logits, min_ndim=1)
    if logits.dim() > 2:
        raise v.ArgumentError(
            f"{api}: logits must be (C,) or (N, C) (got shape {tuple(logits.shape)}); flatten the "
            f"independent variables into N"
        )
    if estimators is None:
        estimators = ESTIMATORS
    if isinstance(estimators, str) or not isinstance(estimators, Iterable):
        raise v.ArgumentTypeError(
            f"{api}: estimators must be a list of names (got {v.describe(estimators)}); "
            f"for one estimator pass [{estimators!r}]"
        )
    estimators = [v.choice(api, "estimators", e, ESTIMATORS) for e in estimators]
    n_samples = v.integer(api, "n_samples", n_samples, low=2)
    tau = v.real(api, "tau", tau, positive=True)
    max_outcomes = v.integer(api, "max_outcomes", max_outcomes, low=1)
    if generator is not None:
        v.generator(api, generator, torch.device("cpu"))

    theta = logits.detach().to(torch.float64, copy=True).cpu()
    n_vars, n_classes = (1, theta.shape[0]) if theta.dim() == 1 else tuple(theta.shape)
    outcomes = n_classes**n_vars
    if outcomes > max_outcomes:
        raise v.ArgumentError(
            f"{api}: enumerating E[f(D)] needs C ** N = {n_classes} ** {n_vars} = {outcomes} outcomes, "
            f"more than max_outcomes={max_outcomes}; use fewer variables or classes, or raise max_outcomes"
        )

    def loss(d: torch.Tensor) -> torch.Tensor:
        out = f(d)
        if not isinstance(out, torch.Tensor) or out.numel() != 1:
            raise v.ArgumentError(f"{api}: f must return a scalar tensor (got {v.describe(out)})")
        return out.reshape(())

    exact = _exact_gradient(loss, theta, n_vars, n_classes)
    stats = {}
    for name in estimators:
        leaf = theta.expand(n_samples, *theta.shape).clone().requires_grad_(True)
        samples = sample_onehot(leaf, estimator=name, tau=tau, generator=generator)
        total = torch.stack([loss(d) for d in samples.unbind(0)]).sum()
        (grads,) = torch.autograd.grad(total, leaf, allow_unused=True)
        grads = torch.zeros_like(leaf) if grads is None else grads
        stats[name] = _summarise(name, grads.detach(), exact)
    return EstimatorComparison(exact=exact.reshape(logits.shape), stats=stats, n_samples=n_samples)


def _exact_gradient(loss, theta: torch.Tensor, n_vars: int, n_classes: int) -> torch.Tensor:
    index = torch.cartesian_prod(*[torch.arange(n_classes)] * n_vars).reshape(-1, n_vars)
    onehots = torch.nn.functional.one_hot(index, n_classes).to(torch.float64)  # (M, N, C)
    values = torch.stack([loss(d.reshape(theta.shape)).detach().to(torch.float64) for d in onehots])
    leaf = theta.clone().requires_grad_(True)
    log_p = torch.log_softmax(leaf.reshape(n_vars, n_classes), -1)
    log_p_outcome = log_p.gather(1, index.T).sum(0)  # (M,)
    (grad,) = torch.autograd.grad((log_p_outcome.exp() * values).sum(), leaf)
    return grad


def _summarise(name: str, grads: torch.Tensor, exact: torch.Tensor) -> EstimatorStats:
    flat = grads.reshape(grads.shape[0], -1)
    ref = exact.reshape(-1)
    mean = flat.mean(0)
    bias = (mean - ref).norm().item()
    ref_norm = ref.norm().item()
    std = math.sqrt(((flat - mean) ** 2).sum(1).mean().item())
    cosine = torch.nn.functional.cosine_similarity(flat, ref.expand_as(flat), dim=1, eps=1e-30).mean().item()
    return EstimatorStats(
        name=name,
        bias=bias,
        relative_bias=bias / ref_norm if ref_norm > 0 else math.inf,
        std=std,
        cosine=cosine,
        mean=mean.reshape(exact.shape),
    )
