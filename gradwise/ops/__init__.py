"""Hard decisions that still pass a gradient.

Every op returns the hard value in the forward pass (a one-hot, a k-hot mask, a rounded
value) and a surrogate gradient in the backward pass, chosen by ``estimator=`` from one
registry, :data:`ESTIMATORS`.

>>> import gradwise as gw
>>> gw.ops.ESTIMATORS
('st', 'softmax', 'gumbel', 'reinmax', 'gumbel-rao')
"""

from gradwise.ops._compare import EstimatorComparison, EstimatorStats, compare_estimators
from gradwise.ops._estimators import ESTIMATORS
from gradwise.ops._gumbel import gumbel_softmax, gumbel_topk, sample_onehot
from gradwise.ops._schedules import CosineTau, EstimatorSwitch, ExponentialTau, LinearTau
from gradwise.ops._straight_through import argmax_onehot, round_ste, sign_ste, topk_mask

__all__ = [
    "ESTIMATORS",
    "CosineTau",
    "EstimatorComparison",
    "EstimatorStats",
    "EstimatorSwitch",
    "ExponentialTau",
    "LinearTau",
    "argmax_onehot",
    "compare_estimators",
    "gumbel_softmax",
    "gumbel_topk",
    "round_ste",
    "sample_onehot",
    "sign_ste",
    "topk_mask",
]
