"""Deterministic hard decisions with a surrogate gradient: argmax, top-k, round, sign."""

from __future__ import annotations

import torch

from gradwise import _validate as v
from gradwise.ops._estimators import hard_choice


def argmax_onehot(logits: torch.Tensor, dim: int = -1, *, estimator: str = "softmax", tau=1.0) -> torch.Tensor:
    """One-hot of the argmax of ``logits`` along ``dim``, with a surrogate gradient.

    The forward value is exactly ``one_hot(logits.argmax(dim))`` (ties go to the lowest
    index, as ``torch.argmax``). The backward pass uses ``estimator`` (see
    :data:`gradwise.ops.ESTIMATORS`): by default the gradient of ``softmax(logits / tau)``.

    Args:
        logits: ``(..., C, ...)`` floating tensor, classes along ``dim``. Classes at
            ``-inf`` are never chosen; a row with no finite logit gives a row of zeros
            and no gradient. A NaN is never hidden: its row's output and gradient hold NaN.
            ``+inf`` is not a valid logit.
        dim: the class dimension.
        estimator: ``"st"``, ``"softmax"`` or ``"reinmax"`` (``"gumbel"`` and
            ``"gumbel-rao"`` need a sample: use :func:`sample_onehot`).
        tau: temperature of the surrogate, a positive float or a positive tensor that
            broadcasts to ``logits`` with size 1 along ``dim`` (one per row). A tensor
            ``tau`` that requires grad receives the surrogate's gradient.

    Returns:
        A tensor of the shape, dtype and device of ``logits`` with a single 1 along ``dim``.

    Example:
        >>> logits = torch.tensor([[1.0, 3.0, 2.0]], requires_grad=True)
        >>> y = argmax_onehot(logits)
        >>> y
        tensor([[0., 1., 0.]], grad_fn=<HardChoiceBackward>)
        >>> (y * torch.tensor([0.0, 1.0, 0.0])).sum().backward()
        >>> logits.grad  # the gradient of softmax(logits)[1]
        tensor([[-0.0599,  0.2227, -0.1628]])
    """
    return hard_choice("argmax_onehot", logits, k=1, dim=dim, estimator=estimator, tau=tau, sampling=False)


def topk_mask(scores: torch.Tensor, k: int, dim: int = -1, *, estimator: str = "softmax", tau=1.0) -> torch.Tensor:
    """{0, 1} mask with ones at the ``k`` largest ``scores`` along ``dim`` (hard top-k attention).

    Backward: the estimator applied to the k-hot mask as a point ``D / k`` of the simplex
    and scaled by ``k``; for ``"softmax"`` the gradient of ``k * softmax(scores / tau)``,
    for ``"st"`` the identity.

    Args:
        scores: ``(..., N, ...)`` floating tensor, candidates along ``dim``. Candidates at
            ``-inf`` are never chosen: a row with fewer than ``k`` finite scores gets fewer
            than ``k`` ones.
        k: how many to keep, ``1 <= k <= scores.shape[dim]``.
        dim: the candidate dimension.
        estimator: ``"st"``, ``"softmax"`` or ``"reinmax"``.
        tau: temperature of the surrogate (as in :func:`argmax_onehot`).

    Returns:
        A mask of the shape, dtype and device of ``scores`` with exactly ``k`` ones along ``dim``.

    Example:
        >>> topk_mask(torch.tensor([0.1, 2.0, -1.0, 0.7]), k=2)
        tensor([0., 1., 0., 1.])
    """
    return hard_choice("topk_mask", scores, k=k, dim=dim, estimator=estimator, tau=tau, sampling=False, name="scores")


def _clip_window(api: str, clip, *, symmetric_ok: bool) -> tuple[float, float] | None:
    if clip is None:
        return None
    if symmetric_ok and not isinstance(clip, tuple | list):
        c = v.real(api, "clip", clip, positive=True)
        return (-c, c)
    if not isinstance(clip, tuple | list) or len(clip) != 2:
        expected = "a pair (lo, hi)" + (" or a positive float c for (-c, c)" if symmetric_ok else "")
        raise v.ArgumentTypeError(f"{api}: clip must be None or {expected} (got {v.describe(clip)})")
    lo, hi = (v.real(api, "clip", c) for c in clip)
    if not lo < hi:
        raise v.ArgumentError(f"{api}: clip must have lo < hi (got ({lo}, {hi}))")
    return lo, hi


class _RoundSTE(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x, op, lo, hi):
        # torch.sign(NaN) is 0: a NaN would vanish; it stays NaN here (as numpy.sign and torch.round keep it)
        y = torch.round(x) if op == "round" else torch.where(torch.isnan(x), x, torch.sign(x))
        # the window clamps round's output; for sign it only gates the gradient
        return y if lo is None or op == "sign" else y.clamp(lo, hi)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, _, lo, hi = inputs
        ctx.window = lo, hi
        ctx.save_for_backward(x if lo is not None else None)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        lo, hi = ctx.window
        if lo is not None:
            grad = torch.where((x >= lo) & (x <= hi), grad, 0.0)
        return grad, None, None, None


def round_ste(x: torch.Tensor, *, clip: tuple[float, float] | None = None) -> torch.Tensor:
    """``torch.round(x)`` forward (half to even), identity gradient backward (quantization STE).

    With ``clip=(lo, hi)`` the forward is ``round(x).clamp(lo, hi)`` and the gradient is
    passed only where ``lo <= x <= hi`` (the clipped straight-through estimator).

    Args:
        x: floating tensor of any shape.
        clip: ``None`` or the pair ``(lo, hi)`` of the representable range.

    Returns:
        A tensor like ``x``.

    Example:
        >>> x = torch.tensor([-3.7, 0.4, 1.5, 9.0], requires_grad=True)
        >>> y = round_ste(x, clip=(-2, 2))
        >>> y
        tensor([-2.,  0.,  2.,  2.], grad_fn=<_RoundSTEBackward>)
        >>> y.sum().backward()
        >>> x.grad
        tensor([0., 1., 1., 0.])
    """
    x = v.floating_tensor("round_ste", "x", x)
    window = _clip_window("round_ste", clip, symmetric_ok=False)
    lo, hi = window if window is not None else (None, None)
    return _RoundSTE.apply(x, "round", lo, hi)


def sign_ste(x: torch.Tensor, *, clip: float | tuple[float, float] | None = None) -> torch.Tensor:
    """``torch.sign(x)`` forward (``sign(0) = 0``; NaN stays NaN), identity gradient backward (binarization STE).

    With ``clip=c`` (or ``(lo, hi)``) the gradient is passed only where ``|x| <= c``
    (``lo <= x <= hi``): the hardtanh estimator of BinaryConnect and BNNs.

    Args:
        x: floating tensor of any shape.
        clip: ``None``, a positive float ``c`` for ``(-c, c)``, or a pair ``(lo, hi)``.

    Returns:
        A tensor like ``x`` with values in {-1, 0, 1}.

    Example:
        >>> x = torch.tensor([-2.0, -0.5, 0.5, 3.0], requires_grad=True)
        >>> sign_ste(x, clip=1.0).sum().backward()
        >>> x.grad
        tensor([0., 1., 1., 0.])
    """
    x = v.floating_tensor("sign_ste", "x", x)
    window = _clip_window("sign_ste", clip, symmetric_ok=True)
    lo, hi = window if window is not None else (None, None)
    return _RoundSTE.apply(x, "sign", lo, hi)
