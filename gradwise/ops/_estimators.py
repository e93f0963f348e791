"""One registry of backward rules, and the one autograd Function every discrete op uses.

Every op of ``gradwise.ops`` computes a hard {0, 1} value ``D`` from ``logits`` (an
argmax, a top-k, a Gumbel-max sample, ...) and differentiates through a surrogate.
The surrogate is picked by name from :data:`ESTIMATORS`; its rule maps the incoming
gradient ``g`` (the gradient of the loss w.r.t. ``D``) to the gradient w.r.t. ``logits``
(and ``tau`` when ``tau`` is a tensor that requires grad).

For a k-hot output (``topk_mask``, ``gumbel_topk``), every softmax-based rule is applied
to ``D / k``, a point of the simplex, and scaled by ``k``: the ``"softmax"`` surrogate of a
k-hot mask is ``k * softmax(logits / tau)``. For ``k = 1`` this is the usual one-hot rule.

Notation: ``J(p) g = p * (g - <p, g>)`` is the vector-Jacobian product of softmax at
probabilities ``p`` (``<., .>`` a sum along ``dim``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from gradwise import _validate as v
from gradwise.errors import ArgumentError
from gradwise.ops import _kernels, _noise
from gradwise.ops._kernels import _reference


@dataclass(frozen=True)
class _Saved:
    """What a backward rule may read (arithmetic dtype: float32, or float64).

    Rules may produce NaN on rows whose logits are all ``-inf`` (a plain softmax of such a
    row): :class:`HardChoice` replaces those rows by zeros once, after the rule.
    """

    logits: torch.Tensor
    perturbed: torch.Tensor | None  # logits + Gumbel noise, for sampling ops
    hard: torch.Tensor
    tau: float | torch.Tensor
    need_tau_grad: bool
    k: int
    dim: int
    rao_samples: int
    generator: torch.Generator | None


# A rule returns (grad wrt logits, grad wrt tau of the shape of `hard` with size 1 along
# dim, or None when tau needs no gradient or the rule does not depend on it).
Rule = Callable[[_Saved, torch.Tensor], "tuple[torch.Tensor, torch.Tensor | None]"]


@dataclass(frozen=True)
class Estimator:
    """A named backward rule.

    Attributes:
        name: the name ops take as ``estimator=``.
        summary: one line on what the rule is.
        sampling_only: whether the rule reads the Gumbel noise that drew the sample, and so
            applies to sampling ops only (the noise is saved for backward only then).
    """

    name: str
    summary: str
    sampling_only: bool
    rule: Rule


def finite_rows(z: torch.Tensor, dim: int) -> torch.Tensor:
    """Whether each row along ``dim`` is not all ``-inf`` (keepdim). A row holding a NaN
    counts as valid, so that the NaN propagates instead of being hidden."""
    return z.amax(dim, keepdim=True) != float("-inf")


def softmax(z: torch.Tensor, dim: int) -> torch.Tensor:
    """``softmax`` along ``dim`` that gives 0 (not NaN) on rows that are all ``-inf``,
    with a NaN-free gradient too (the rows are replaced before the softmax, not after)."""
    valid = finite_rows(z, dim)
    return torch.where(valid, torch.softmax(torch.where(valid, z, 0.0), dim), 0.0)


def softmax_vjp(p: torch.Tensor, g: torch.Tensor, dim: int) -> torch.Tensor:
    """``J(p) g = p * (g - <p, g>)``, in one fused kernel."""
    return torch._softmax_backward_data(g, p, dim, p.dtype)


def _is_one(x) -> bool:
    return isinstance(x, float | int) and x == 1


def _tempered(z: torch.Tensor, s: _Saved, g: torch.Tensor):
    """Gradient of ``k * softmax(z / tau)`` w.r.t. ``z`` and ``tau``."""
    v = softmax_vjp(torch.softmax(z if _is_one(s.tau) else z / s.tau, s.dim), g, s.dim)
    scale = s.k / s.tau
    grad_z = v if _is_one(scale) else v * scale
    grad_tau = None
    if s.need_tau_grad:
        finite_z = torch.where(torch.isfinite(z), z, 0.0)  # masked classes have v = 0
        grad_tau = (v * finite_z).sum(s.dim, keepdim=True) * (-s.k / s.tau**2)
    return grad_z, grad_tau


def _rule_st(s: _Saved, g: torch.Tensor):
    return g, None


def _rule_softmax(s: _Saved, g: torch.Tensor):
    return _tempered(s.logits, s, g)


def _rule_gumbel(s: _Saved, g: torch.Tensor):
    return _tempered(s.perturbed, s, g)


def _rule_reinmax(s: _Saved, g: torch.Tensor):
    # Liu et al. 2023, Algorithm 2: D + 2*pi_1 - pi_0/2 - stopgrad(same), where
    # pi_0 = softmax(logits), pi_1 = softmax(logits + stopgrad(log pi_half - logits)),
    # pi_half = (softmax(logits / tau) + D) / 2. pi_1 equals pi_half with the Jacobian of
    # softmax at pi_half; tau enters only through a stopped gradient.
    pi_0 = torch.softmax(s.logits, s.dim)
    pi_tau = pi_0 if _is_one(s.tau) else torch.softmax(s.logits / s.tau, s.dim)
    pi_half = (pi_tau + (s.hard if s.k == 1 else s.hard / s.k)) * 0.5
    grad = softmax_vjp(pi_half, g, s.dim) * 2 - softmax_vjp(pi_0, g, s.dim) * 0.5
    return (grad if s.k == 1 else grad * s.k), None


def _rule_gumbel_rao(s: _Saved, g: torch.Tensor):
    # Paulus et al. 2021: average the Gumbel-softmax gradient over K Gumbels drawn
    # conditionally on the sample. Drawn here, one at a time, so memory does not grow with K.
    grad_z = grad_tau = None
    draws = _noise.conditional_gumbels(s.logits, s.perturbed, s.k, s.dim, s.rao_samples, s.generator)
    for z in draws:
        gz, gt = _tempered(z, s, g)
        grad_z = gz if grad_z is None else grad_z.add_(gz)
        if gt is not None:
            grad_tau = gt if grad_tau is None else grad_tau.add_(gt)
    grad_z = grad_z.div_(s.rao_samples)
    return grad_z, None if grad_tau is None else grad_tau.div_(s.rao_samples)


_REGISTRY: dict[str, Estimator] = {
    e.name: e
    for e in (
        Estimator("st", "identity: dlogits = g (plain straight-through)", False, _rule_st),
        Estimator(
            "softmax",
            "gradient of k * softmax(logits / tau) (straight-through softmax)",
            False,
            _rule_softmax,
        ),
        Estimator(
            "gumbel",
            "gradient of k * softmax((logits + G) / tau) with the noise G of the sample "
            "(straight-through Gumbel-softmax)",
            True,
            _rule_gumbel,
        ),
        Estimator(
            "reinmax",
            "ReinMax (Liu et al. 2023): 2 J(pi_half) g - J(softmax(logits)) g / 2, "
            "pi_half = (softmax(logits / tau) + D / k) / 2",
            False,
            _rule_reinmax,
        ),
        Estimator(
            "gumbel-rao",
            "Gumbel-Rao (Paulus et al. 2021): the 'gumbel' rule averaged over rao_samples "
            "Gumbels drawn conditionally on the sample, redrawn in backward",
            True,
            _rule_gumbel_rao,
        ),
    )
}

ESTIMATORS: tuple[str, ...] = tuple(_REGISTRY)
"""Names of the estimators every op of ``gradwise.ops`` accepts as ``estimator=``."""


def estimators_for(sampling: bool) -> tuple[str, ...]:
    """The estimator names valid for a sampling (or deterministic) op."""
    return tuple(n for n, e in _REGISTRY.items() if sampling or not e.sampling_only)


def get(name: str) -> Estimator:
    return _REGISTRY[name]


class HardChoice(torch.autograd.Function):
    """Forward: the k-hot of the top-``k`` of ``logits (+ the Gumbel noise of bits)`` along ``dim``.
    Backward: the named estimator's rule. Both go through :mod:`gradwise.ops._kernels`
    (a Triton kernel or the torch reference)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(logits, noise, tau, k, dim, estimator, rao_samples, generator):
        # noise: None, the Gumbel noise, or the int32 bits it is made from (ops/_kernels)
        return _kernels.hard_forward(logits, noise, k, dim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, noise, tau, k, dim, estimator, rao_samples, generator = inputs
        tau_tensor = tau if isinstance(tau, torch.Tensor) else None
        if not _REGISTRY[estimator].sampling_only:
            noise = None  # not read by the rule: do not keep it alive
        ctx.save_for_backward(logits, noise, output, tau_tensor)
        ctx.tau = None if tau_tensor is not None else tau
        ctx.k, ctx.dim, ctx.estimator = k, dim, estimator
        ctx.rao_samples, ctx.generator = rao_samples, generator

    @staticmethod
    def backward(ctx, grad_hard):
        logits, noise, hard, tau_tensor = ctx.saved_tensors
        need_tau_grad = tau_tensor is not None and ctx.needs_input_grad[2]
        if not ctx.needs_input_grad[0] and not need_tau_grad:
            return (None,) * 8
        dtype = _noise.compute_dtype(logits.dtype)
        tau = tau_tensor.to(dtype) if tau_tensor is not None else ctx.tau
        # D is piecewise constant in the logits: a double backward must not see a gradient
        # through it (saved outputs otherwise carry this Function's own surrogate)
        hard = hard.detach()
        if not need_tau_grad:
            grad_logits = _kernels.kernel_backward(ctx.estimator, grad_hard, logits, noise, hard, tau, ctx.k, ctx.dim)
            if grad_logits is not None:
                return grad_logits, None, None, None, None, None, None, None
        z = logits.to(dtype)
        saved = _Saved(
            logits=z,
            perturbed=None if noise is None else _reference.perturbed(z, noise),
            hard=hard.to(dtype),
            tau=tau,
            need_tau_grad=need_tau_grad,
            k=ctx.k,
            dim=ctx.dim,
            rao_samples=ctx.rao_samples,
            generator=ctx.generator,
        )
        grad_logits, grad_tau = _REGISTRY[ctx.estimator].rule(saved, grad_hard.to(dtype))
        # a row with no finite logit chose nothing and passes no gradient (nor NaN)
        valid = finite_rows(z, ctx.dim)
        grad_logits = torch.where(valid, grad_logits, 0.0)
        if grad_tau is not None:
            grad_tau = torch.where(valid, grad_tau, 0.0).sum_to_size(tau_tensor.shape).to(tau_tensor.dtype)
        grad_logits = grad_logits.to(logits.dtype) if ctx.needs_input_grad[0] else None
        return grad_logits, None, grad_tau, None, None, None, None, None


def hard_choice(
    api: str,
    logits,
    *,
    k,
    dim,
    estimator,
    tau,
    sampling: bool,
    generator=None,
    rao_samples=None,
    name: str = "logits",
) -> torch.Tensor:
    """Validate the arguments shared by every discrete op, then apply :class:`HardChoice`."""
    logits = v.floating_tensor(api, name, logits, min_ndim=1)
    dim = v.dim(api, dim, logits.dim())
    size = logits.shape[dim]
    if size == 0:
        raise ArgumentError(
            f"{api}: {name} has size 0 along dim={dim} (shape {tuple(logits.shape)}): there is no class to choose"
        )
    k = v.integer(api, "k", k, low=1, high=size)
    v.choice(api, "estimator", estimator, ESTIMATORS)
    valid = estimators_for(sampling)
    if estimator not in valid:
        raise ArgumentError(
            f"{api}: estimator must be one of {', '.join(map(repr, valid))} (got {estimator!r}); "
            f"{estimator!r} needs a sampled output: use a sampling op (sample_onehot, gumbel_topk, "
            f"gumbel_softmax(hard=True))"
        )
    if rao_samples is None:
        rao_samples = 10
    elif estimator != "gumbel-rao":
        raise ArgumentError(f"{api}: rao_samples applies only to estimator='gumbel-rao' (got estimator={estimator!r})")
    else:
        rao_samples = v.integer(api, "rao_samples", rao_samples, low=1)
    tau = v.temperature(api, tau, logits, dim)
    generator = v.generator(api, generator, logits.device)
    noise = _kernels.noise(logits, k, dim, generator) if sampling else None
    return HardChoice.apply(logits, noise, tau, k, dim, estimator, rao_samples, generator)
