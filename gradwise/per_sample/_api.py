"""grads, norms, clip_and_accumulate."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from gradwise import _validate as v
from gradwise._losses import loss_name, track_forms
from gradwise.errors import ArgumentError, ArgumentTypeError
from gradwise.per_sample._capture import Capture
from gradwise.per_sample._loss import check_arguments, checked_loss_input, per_sample_losses, trainable

# functorch's fallback for ops without a batching rule (nn.LSTM) is slow but exact; we chose it
_VMAP_FALLBACK_WARNING = "There is a performance drop because we have not yet implemented the batching rule"


def _eager(fn):
    """``torch.compiler.disable(fn)``, applied at the first call: applying it at import time
    would import torch._dynamo (about a second) with ``import gradwise``."""
    disabled = None

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        nonlocal disabled
        if disabled is None:
            disabled = torch.compiler.disable(fn)
        return disabled(*args, **kwargs)

    return wrapper


# Hooks, autograd-graph hooks and vmap over a module run eagerly: inside a compiled caller these
# functions are a graph break, and a compiled model is unwrapped to the module it compiles.
@_eager
def _vmap_grads(
    api: str,
    module: nn.Module,
    loss_fn: Callable[..., Any],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    names: Iterable[str],
    chunk_size: int | None,
) -> dict[str, torch.Tensor]:
    """Exact per-sample gradients of the named parameters with ``vmap(grad(...))``."""
    everything = trainable(module)
    chosen = {name: everything[name].detach() for name in names}
    frozen = {name: p.detach() for name, p in module.named_parameters() if name not in chosen}
    buffers = dict(module.named_buffers())

    def one(params, x, t):
        out = functional_call(module, ({**frozen, **params}, buffers), (x.unsqueeze(0),))
        loss = per_sample_losses(api, loss_fn, out, t.unsqueeze(0))
        return loss.sum()

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_VMAP_FALLBACK_WARNING)
            return vmap(grad(one), in_dims=(None, 0, 0), chunk_size=chunk_size, randomness="different")(
                chosen, inputs, targets
            )
    except RuntimeError:
        # some ops have no working batching rule (nn.LSTM's mkldnn kernel): exact, one sample at a time
        one_grad = grad(one)
        each = [one_grad(chosen, inputs[i], targets[i]) for i in range(inputs.shape[0])]
        return {name: torch.stack([g[name] for g in each]) for name in chosen}


def grads(
    model: nn.Module,
    loss_fn: Callable[..., Any],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    params: Iterable[str] | None = None,
    chunk_size: int | None = None,
    check_loss: bool = True,
) -> dict[str, torch.Tensor]:
    """Per-sample gradients: the gradient of each sample's own loss, for every trainable parameter.

    ``result[name][i]`` is the gradient of ``loss_fn(model(inputs[i:i+1]), targets[i:i+1])``,
    the sample's loss as the loss function computes it on that sample alone: not divided
    by the batch size for a mean-reduced loss (so ``result[name].mean(0)`` is the gradient of
    the batch's mean loss when every sample has the same weight), and for a sequence loss
    with ``reduction="mean"`` the mean over that sample's own (non-ignored) positions. A
    sample whose targets are all ``ignore_index`` has a zero gradient.

    Computed with ``torch.func`` (``functional_call`` + ``vmap(grad(...))``), in chunks of
    ``chunk_size`` samples to bound memory. Buffers (BatchNorm in eval mode), tied
    parameters (listed once, under their first name) and bare ``nn.Parameter`` attributes
    are supported. Models wrapped by ``torch.compile`` or DDP are unwrapped. Random layers
    (dropout in training mode) draw independently for each sample.

    Args:
        model: the network; ``model(inputs)`` returns one tensor, batch first. BatchNorm
            layers must be in eval mode (in training mode they mix the samples).
        loss_fn: the ordinary loss, ``loss_fn(output, target)``: a ``torch.nn.functional``
            loss (``F.cross_entropy``), a ``functools.partial`` of one, an ``nn`` loss module
            (``nn.CrossEntropyLoss(label_smoothing=0.1)``), whose reduction gradwise handles;
            or any callable returning one loss per sample, shape ``(B,)``.
        inputs: ``(B, ...)`` model inputs.
        targets: ``(B, ...)`` targets.
        params: names of the parameters to differentiate (default: all trainable ones).
        chunk_size: samples per vectorised chunk (default: the whole batch at once).
        check_loss: check that the loss receives the kind of input it expects (probabilities
            into ``cross_entropy``, raw scores into ``nll_loss``, ...) and raise otherwise.

    Returns:
        ``{name: (B, *param.shape)}`` per-sample gradients, in the parameters' order.

    Raises:
        ArgumentError: mismatched or empty batch, no trainable parameter, an unknown name in
            ``params``, a loss that does not give one value per sample, a wrong loss input.
        UnsupportedError: a BatchNorm layer in training mode.

    Example:
        >>> import torch.nn.functional as F
        >>> model = torch.nn.Linear(3, 2)
        >>> x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
        >>> g = grads(model, F.cross_entropy, x, y)
        >>> g["weight"].shape, g["bias"].shape
        (torch.Size([5, 2, 3]), torch.Size([5, 2]))
        >>> loss = F.cross_entropy(model(x[:1]), y[:1])  # sample 0 alone
        >>> torch.allclose(g["weight"][0], torch.autograd.grad(loss, model.weight)[0], atol=1e-6)
        True
    """
    api = "per_sample.grads"
    module, _ = check_arguments(api, model, loss_fn, inputs, targets)
    everything = trainable(module)
    if params is None:
        names = list(everything)
    else:
        if isinstance(params, str) or not isinstance(params, Iterable):
            raise ArgumentTypeError(f"{api}: params must be an iterable of parameter names (got {v.describe(params)})")
        names = list(params)
        unknown = [n for n in names if n not in everything]
        if unknown or not names:
            raise ArgumentError(
                f"{api}: params must name trainable parameters of the model (got {unknown or names!r})\n"
                f"  trainable: {', '.join(everything)}"
            )
    if chunk_size is not None:
        chunk_size = v.integer(api, "chunk_size", chunk_size, low=1)
    # the loss input is checked, and a custom loss's shape probed, on a forward pass of a few samples
    # (2, or up to 32 where 2 give fewer than 64 values to judge by)
    with torch.no_grad(), track_forms() as forms:
        size = 2
        probe = module(inputs[:size])
        if isinstance(probe, torch.Tensor) and probe.numel() < 64 and inputs.shape[0] > 2:
            size = 32
            probe = module(inputs[:size])
    if isinstance(probe, torch.Tensor):
        checked_loss_input(api, loss_fn, probe, targets[:size], check_loss, forms.of(probe))
    if loss_name(loss_fn) is None:
        per_sample_losses(api, loss_fn, probe, targets[:size])
    result = _vmap_grads(api, module, loss_fn, inputs, targets, names, chunk_size)
    return {name: result[name] for name in names}


@_eager
def _norms_and_losses(
    api: str,
    model: nn.Module,
    loss_fn: Callable[..., Any],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    check_loss: bool,
    keep_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, nn.Module]:
    """Per-sample gradient norms and the per-sample losses (their graph kept when ``keep_graph``)."""
    module, batch = check_arguments(api, model, loss_fn, inputs, targets)
    params = trainable(module)
    ids = {id(p) for p in params.values()}
    capture = Capture(module, ids)
    try:
        with capture:
            output = module(inputs)
        if isinstance(output, torch.Tensor):
            checked_loss_input(api, loss_fn, output, targets, check_loss, capture.mode.of(output))
        losses = per_sample_losses(api, loss_fn, output, targets)
        if not losses.requires_grad:
            raise ArgumentError(
                f"{api}: the loss does not depend on any trainable parameter (no gradient flows from it); "
                "is an argmax, .detach() or torch.no_grad() cutting the graph?"
            )
        # a parameter goes to the rules only if all its uses were calls of its owners on batch-first input
        covered = {pid for pid in capture.owners if pid not in capture.foreign}
        for record in capture.records:
            if record.a.shape[0] != batch or record.shape[0] != batch:
                covered -= {id(p) for p in record.module.parameters(recurse=False)}
        records = [r for r in capture.records if r.requires_grad]
        uses: dict[int, int] = {}
        for record in records:
            for p in record.module.parameters(recurse=False):
                if id(p) in covered:
                    uses[id(p)] = uses.get(id(p), 0) + 1
        total = losses.new_zeros(batch, dtype=torch.float64 if losses.dtype == torch.float64 else torch.float32)
        shared: dict[int, torch.Tensor] = {}  # id(param) -> per-sample gradient summed over its uses

        def consume(record, g):
            g = g.detach()
            local = [(n, p) for n, p in record.module.named_parameters(recurse=False) if id(p) in covered]
            if any(uses[id(p)] == 1 for _, p in local):
                sq = record.rule[0](record.module, record.a, g)
                for n, p in local:
                    if uses[id(p)] == 1 and n in sq:
                        total.add_(sq[n].to(total.dtype))
            if any(uses[id(p)] > 1 for _, p in local):
                parts = record.rule[1](record.module, record.a, g)
                for n, p in local:
                    if uses[id(p)] > 1:
                        shared[id(p)] = parts[n] if id(p) not in shared else shared[id(p)] + parts[n]
            record.a = None  # free the layer input as the backward pass moves on

        # Each layer's output gradient is either asked for (small input and output: both are kept until
        # the end) or consumed by a hook as the backward pass reaches the layer (large ones, and outputs
        # modified in place afterwards); asking for that layer's weight gradient makes autograd get there.
        asked, weights = [], []
        for record in records:
            if record.route == "out" and record.out._version != record.version:
                record.route, record.out = "node", None  # modified in place after the layer
            if record.route == "node":
                # the cheapest parameter to reach the layer by: a bias gradient is a sum, and autograd
                # skips the weight gradient (a matmul) that nobody asked for
                own = dict(record.module.named_parameters(recurse=False))
                order = [own.pop("bias", None), *own.values()]
                weights.append(next(p for p in order if p is not None and p.requires_grad))
            else:
                asked.append(record)
        capture.consume = consume
        wanted = [r.out for r in asked] + weights
        found = (  # nothing to ask for when no layer has a rule (every parameter goes to the fallback)
            torch.autograd.grad(losses.sum(), wanted, retain_graph=keep_graph, allow_unused=True) if wanted else ()
        )
        capture.consume = None
        for record, g in zip(asked, found, strict=False):
            if g is not None:
                consume(record, g)
    finally:
        capture.consume = None
    for part in shared.values():
        total += part.reshape(batch, -1).square().sum(1).to(total.dtype)
    fallback = [name for name, p in params.items() if id(p) not in covered]
    if fallback:
        exact = _vmap_grads(api, module, loss_fn, inputs, targets, fallback, None)
        for g in exact.values():
            total += g.reshape(batch, -1).square().sum(1).to(total.dtype)
    return total.sqrt().to(losses.dtype), losses, module


def norms(
    model: nn.Module,
    loss_fn: Callable[..., Any],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    check_loss: bool = True,
) -> torch.Tensor:
    """Per-sample gradient L2 norms over all trainable parameters, mostly without materialising
    the per-sample gradients.

    The norm of sample ``i`` is that of the gradient :func:`grads` returns for it (the
    gradient of the sample's own loss, not divided by the batch size). One forward pass
    records each layer's input; one backward pass of the summed per-sample losses gives
    each layer's output gradient, from which a rule per layer computes the norms:

    - ``Linear`` (any number of leading dims: sequences): ``||g||^2 ||a||^2`` for 2-d
      input; for sequences the ghost form ``sum_{t,s} (g_t . g_s)(a_t . a_s)`` or ``G^T A``
      materialised per sample, whichever costs less for that layer;
    - ``Conv1d``/``Conv2d`` (stride, padding, padding modes, groups, dilation): the small
      ``(C_out, C_in/groups, k)`` per-sample gradients from one grouped convolution;
    - ``Embedding`` (repeated indices, ``padding_idx``): ``sum_{t,s} [i_t = i_s] g_t . g_s``;
    - ``LayerNorm``, ``RMSNorm``, ``GroupNorm``, ``BatchNorm`` in eval mode: affine
      parameters from the normalised input;
    - ``MultiheadAttention`` used for self-attention (``q is k is v``, packed weights, as in
      ``nn.TransformerEncoderLayer``): its input and output projections as Linear layers.

    A parameter used outside its layer's own call (``nn.LSTM``, a bare ``nn.Parameter``,
    cross-attention, a layer whose ``forward`` is overridden, a weight read directly by
    another module) is handled exactly by ``torch.func`` on just those parameters: an
    extra vectorised forward and backward pass. A parameter used by several calls (a
    layer applied twice, an embedding tied to the output layer) has its per-sample
    gradient materialised from each call and summed. A model wrapped by ``torch.compile``
    or DDP is unwrapped (per-sample norms need no communication); inside a compiled
    function the call runs eagerly, as a graph break.

    Args:
        model: the network; ``model(inputs)`` returns one tensor, batch first, and its
            layers see batch-first tensors. BatchNorm layers must be in eval mode.
        loss_fn: the ordinary loss, as for :func:`grads`.
        inputs: ``(B, ...)`` model inputs.
        targets: ``(B, ...)`` targets.
        check_loss: check the loss input, as for :func:`grads`.

    Returns:
        ``(B,)`` per-sample gradient norms, in the dtype of the loss.

    Example:
        >>> import torch.nn.functional as F
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> x, y = torch.randn(6, 3), torch.randint(0, 2, (6,))
        >>> n = norms(model, F.cross_entropy, x, y)
        >>> g = grads(model, F.cross_entropy, x, y)
        >>> reference = torch.cat([t.flatten(1) for t in g.values()], dim=1).norm(dim=1)
        >>> torch.allclose(n, reference, atol=1e-5)
        True
    """
    result, _, _ = _norms_and_losses("per_sample.norms", model, loss_fn, inputs, targets, check_loss)
    return result.detach()


def clip_and_accumulate(
    model: nn.Module,
    loss_fn: Callable[..., Any],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    max_norm: float,
    *,
    check_loss: bool = True,
) -> torch.Tensor:
    """Add to each parameter's ``.grad`` the sum of per-sample gradients, each clipped to ``max_norm``.

    The DP-SGD step without noise and accounting:
    ``p.grad += sum_i min(1, max_norm / (norm_i + 1e-6)) * grad_i(p)``, with ``norm_i``
    from :func:`norms` and ``grad_i`` the gradient of sample ``i``'s own loss. Like
    ``backward()``, it adds to ``.grad`` (call ``optimizer.zero_grad()`` first); divide by
    the batch size (or add noise) yourself. One forward and two backward passes (the second
    weights each sample's loss by its clipping factor). On a model wrapped in
    ``DistributedDataParallel``, the added sums are all-reduced, so every rank adds the sum
    over the global batch.

    Args:
        model: the network, as for :func:`norms`.
        loss_fn: the ordinary loss, as for :func:`grads`.
        inputs: ``(B, ...)`` model inputs.
        targets: ``(B, ...)`` targets.
        max_norm: the clipping bound, > 0.
        check_loss: check the loss input, as for :func:`grads`.

    Returns:
        ``(B,)`` the per-sample gradient norms before clipping.

    Example:
        >>> import torch.nn.functional as F
        >>> model = torch.nn.Linear(3, 2)
        >>> x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
        >>> n = clip_and_accumulate(model, F.cross_entropy, x, y, max_norm=0.1)
        >>> bool(model.weight.grad.norm() <= 8 * 0.1 + 1e-6)
        True
    """
    api = "per_sample.clip_and_accumulate"
    max_norm = v.real(api, "max_norm", max_norm, positive=True)
    result, losses, module = _norms_and_losses(api, model, loss_fn, inputs, targets, check_loss, keep_graph=True)
    factors = (max_norm / (result.detach() + 1e-6)).clamp(max=1.0).to(losses.dtype)
    params = [p for p in trainable(module).values()]
    sums = torch.autograd.grad(losses, params, grad_outputs=factors, allow_unused=True)
    distributed = isinstance(model, nn.parallel.DistributedDataParallel)
    for p, s in zip(params, sums, strict=True):
        if s is None:
            continue
        if distributed:
            torch.distributed.all_reduce(s, group=model.process_group)
        if p.grad is None:
            p.grad = s.detach().clone()
        else:
            p.grad.add_(s)
    return result.detach()
