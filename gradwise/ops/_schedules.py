"""Temperature and estimator schedules: small objects called with the training step."""

from __future__ import annotations

import math
from dataclasses import dataclass

from gradwise import _validate as v
from gradwise.ops._estimators import ESTIMATORS


def _step(api: str, step) -> int:
    return v.integer(api, "step", step, low=0)


@dataclass(frozen=True)
class ExponentialTau:
    """``tau(step) = max(tau_min, tau0 * exp(-rate * floor(step / every) * every))``.

    The annealing of Jang et al. (2017): they use ``tau0=1``, ``rate`` in {1e-5, 1e-4},
    ``tau_min=0.5``, updating every 500 steps.

    Example:
        >>> schedule = ExponentialTau(tau0=1.0, rate=1e-4, tau_min=0.5, every=500)
        >>> schedule(0), round(schedule(999), 4), schedule(100_000)
        (1.0, 0.9512, 0.5)
    """

    tau0: float = 1.0
    rate: float = 1e-4
    tau_min: float = 0.5
    every: int = 1

    def __post_init__(self):
        api = "ExponentialTau"
        v.real(api, "tau0", self.tau0, positive=True)
        v.real(api, "rate", self.rate, nonnegative=True)
        v.real(api, "tau_min", self.tau_min, positive=True)
        v.integer(api, "every", self.every, low=1)
        if self.tau_min > self.tau0:
            raise v.ArgumentError(f"{api}: tau_min must be <= tau0 (got tau_min={self.tau_min}, tau0={self.tau0})")

    def __call__(self, step: int) -> float:
        step = _step("ExponentialTau", step)
        return max(self.tau_min, self.tau0 * math.exp(-self.rate * (step // self.every) * self.every))


@dataclass(frozen=True)
class _Interpolated:
    tau0: float
    tau_min: float
    steps: int

    def __post_init__(self):
        api = type(self).__name__
        v.real(api, "tau0", self.tau0, positive=True)
        v.real(api, "tau_min", self.tau_min, positive=True)
        v.integer(api, "steps", self.steps, low=1)

    def __call__(self, step: int) -> float:
        t = min(_step(type(self).__name__, step), self.steps) / self.steps
        return self.tau_min + (self.tau0 - self.tau_min) * self._shape(t)


@dataclass(frozen=True)
class LinearTau(_Interpolated):
    """From ``tau0`` at step 0 linearly to ``tau_min`` at ``steps``, constant after.

    Example:
        >>> LinearTau(tau0=2.0, tau_min=0.5, steps=100)(50)
        1.25
    """

    @staticmethod
    def _shape(t: float) -> float:
        return 1.0 - t


@dataclass(frozen=True)
class CosineTau(_Interpolated):
    """From ``tau0`` at step 0 along a half cosine to ``tau_min`` at ``steps``, constant after.

    Example:
        >>> schedule = CosineTau(tau0=2.0, tau_min=0.5, steps=100)
        >>> schedule(0), schedule(50), schedule(100), schedule(500)
        (2.0, 1.25, 0.5, 0.5)
    """

    @staticmethod
    def _shape(t: float) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * t))


@dataclass(frozen=True)
class EstimatorSwitch:
    """The estimator name to use at a step: ``before`` until step ``at``, ``after`` from it on.

    Typical use: Gumbel-softmax gradients early, plain straight-through late.

    Example:
        >>> schedule = EstimatorSwitch(at=1000, before="gumbel", after="st")
        >>> schedule(0), schedule(999), schedule(1000)
        ('gumbel', 'gumbel', 'st')
    """

    at: int
    before: str = "gumbel"
    after: str = "st"

    def __post_init__(self):
        v.integer("EstimatorSwitch", "at", self.at, low=0)
        v.choice("EstimatorSwitch", "before", self.before, ESTIMATORS)
        v.choice("EstimatorSwitch", "after", self.after, ESTIMATORS)

    def __call__(self, step: int) -> str:
        return self.before if _step("EstimatorSwitch", step) < self.at else self.after
