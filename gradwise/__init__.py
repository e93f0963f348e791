"""gradwise: everything that goes wrong, or must be made to work, when gradients flow backwards.

>>> import gradwise as gw
>>> import torch
>>> logits = torch.randn(4, 10, requires_grad=True)
>>> gw.ops.argmax_onehot(logits, estimator="st").sum(-1)
tensor([1., 1., 1., 1.], grad_fn=<SumBackward1>)
"""

from gradwise import cluster, doctor, errors, ops, per_sample, testing
from gradwise._constrain import constrain
from gradwise.errors import GradwiseError

__version__ = "0.1.0"

__all__ = [
    "GradwiseError",
    "__version__",
    "cluster",
    "constrain",
    "doctor",
    "errors",
    "ops",
    "per_sample",
    "testing",
]
