"""Per-sample gradients and their norms, on the right loss.

The gradient of each example's own loss drives DP-SGD, gradient-norm outlier detection
and data attribution. :func:`grads` returns them for every trainable parameter;
:func:`norms` returns their L2 norms from one forward and one backward pass, without
materialising them where the layer allows it; :func:`clip_and_accumulate` adds the sum of
the clipped per-sample gradients to ``.grad`` (DP-SGD without noise). Before computing,
each checks that the loss receives the input it expects (probabilities into
``cross_entropy`` is an error; ``check_loss=False`` turns the check off).

>>> import torch, torch.nn.functional as F
>>> import gradwise as gw
>>> model = torch.nn.Linear(4, 3)
>>> x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
>>> gw.per_sample.norms(model, F.cross_entropy, x, y).shape
torch.Size([8])
"""

from gradwise.per_sample._api import clip_and_accumulate, grads, norms

__all__ = ["clip_and_accumulate", "grads", "norms"]
