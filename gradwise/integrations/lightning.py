"""The gradient monitor as a Lightning callback: per-parameter gradient norms, update ratios,
dead units and alerts, logged through the trainer's loggers.

:class:`GradwiseCallback` runs a :class:`~gradwise.doctor.GradientMonitor` on the
``LightningModule`` for the length of ``trainer.fit``. The monitor reads the gradients in
``on_before_optimizer_step``, which Lightning calls after the AMP unscale and before
gradient clipping: the norms are those of the gradients the backward produced, unscaled and
unclipped. The update is measured after the optimizer's step, so the update ratio is that of
the step as taken (clipped, with the learning rate of that step). An optimizer whose closure
runs several times a step (LBFGS) is counted once, with the gradients of its first
evaluation, at the weights the step starts from.

Each record goes to every logger of the trainer (rank 0 only), at the step that Lightning
gives the metrics logged with ``self.log`` in the same batch (its count of batches that
stepped, as its ``LearningRateMonitor`` logs; with one optimizer, ``trainer.global_step``
during the step): ``<prefix>/grad_norm/<param>``, ``<prefix>/param_norm/<param>``,
``<prefix>/update_ratio/<param>``, ``<prefix>/nonfinite/<param>`` (the count of NaN/Inf
gradient elements), ``<prefix>/dead_fraction/<module>``,
``<prefix>/saturated_fraction/<module>``, ``<prefix>/grad_norm_total``, ``<prefix>/loss``
(with several optimizers, ``<prefix>/grad_norm_total/optimizer_<i>`` and
``<prefix>/loss/optimizer_<i>``, ``i`` the optimizer's index in ``trainer.optimizers``).
Findings (``non-finite``, ``exploding-gradient``, ``vanishing-gradient``, ``dead-units``)
are kept in ``findings`` and, on a TensorBoard logger, written as text under
``<prefix>/findings``.

This module imports ``lightning`` at its top; ``import gradwise`` never imports it.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn

from gradwise.doctor import Finding, GradientMonitor
from gradwise.errors import ArgumentError, ArgumentTypeError
from gradwise.integrations.tensorboard import write_findings

__all__ = ["GradwiseCallback"]

_PARAM_FIGURES = ("grad_norm", "param_norm", "update_ratio", "nonfinite")
_MODULE_FIGURES = ("dead_fraction", "saturated_fraction")


class GradwiseCallback(pl.Callback):
    """Monitor the gradients of ``trainer.fit``: norms, update ratios, dead units, alerts.

    The monitor is made and attached in ``on_fit_start`` (after ``configure_model`` and the
    strategy's setup, so that it sees the final modules and devices) and detached in
    ``on_fit_end``, ``on_exception`` and ``teardown``: after ``fit``, returned or raised, the
    model, its optimizers and torch's global hooks are as they were. While a validation
    loop runs inside ``fit`` (the sanity check included), the monitor is paused, so that the
    validation batches do not enter the activation statistics of the next training step.

    Args:
        every: record one optimizer step in ``every`` (steps 1, 1 + every, ...; 1-based).
        alerts: True (findings in ``findings`` and the logs), False (figures only), or
            ``"raise"``: the first alert raises :class:`~gradwise.doctor.GradientAlert`
            (a ``BaseException``), which stops ``trainer.fit`` and propagates out of it.
        jsonl: a path: one JSON object per recorded step (see :func:`~gradwise.doctor.read_jsonl`).
        log: send the figures to the trainer's loggers (rank 0 only).
        prefix: the first part of the logged names (``<prefix>/grad_norm/<param>``).

    Attributes:
        monitor: the :class:`~gradwise.doctor.GradientMonitor` of the latest ``fit`` (None before).

    Example:
        >>> import torch
        >>> import lightning.pytorch as pl
        >>> class Model(pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        ...     def training_step(self, batch, batch_idx):
        ...         x, y = batch
        ...         return torch.nn.functional.mse_loss(self.net(x), y)
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
        >>> data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
        >>> callback = GradwiseCallback(every=2)
        >>> callback
        GradwiseCallback(every=2)
        >>> trainer = pl.Trainer(
        ...     max_steps=4, callbacks=[callback], accelerator="cpu", logger=False, enable_checkpointing=False,
        ...     enable_progress_bar=False, enable_model_summary=False,
        ... )
        >>> trainer.fit(Model(), torch.utils.data.DataLoader(data, batch_size=16))  # doctest: +SKIP
        >>> [r["step"] for r in callback.history], list(callback.history[0]["params"])  # doctest: +SKIP
        ([1, 3], ['net.0.weight', 'net.0.bias', 'net.2.weight', 'net.2.bias'])
        >>> callback.findings  # doctest: +SKIP
        []

        (The doctests skip ``fit``, which warns under ``-W error`` with lightning 2.6 and torch
        2.13; ``tests/integrations/test_lightning.py`` runs this example in full.)
    """

    def __init__(
        self,
        every: int = 1,
        *,
        alerts: bool | str = True,
        jsonl: str | os.PathLike | None = None,
        log: bool = True,
        prefix: str = "gradwise",
    ):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ArgumentError(f"GradwiseCallback: every must be a positive integer (got {every!r})")
        if alerts not in (True, False, "raise"):
            raise ArgumentError(f"GradwiseCallback: alerts must be True, False or 'raise' (got {alerts!r})")
        if jsonl is not None and not isinstance(jsonl, str | os.PathLike):
            raise ArgumentTypeError(f"GradwiseCallback: jsonl must be a path or None (got {type(jsonl).__name__})")
        if not isinstance(log, bool):
            raise ArgumentTypeError(f"GradwiseCallback: log must be True or False (got {type(log).__name__})")
        if not isinstance(prefix, str) or not prefix:
            raise ArgumentError(f"GradwiseCallback: prefix must be a non-empty string (got {prefix!r})")
        self.every = every
        self.alerts = alerts
        self.jsonl = jsonl
        self._log = log  # not "log": Lightning sets every callback's log and log_dict to the module's
        self.prefix = prefix
        self.monitor: GradientMonitor | None = None
        self._trainer: pl.Trainer | None = None
        self._logged_at: dict[int, tuple[int, int]] = {}  # monitor step -> (logger step, optimizer index)
        self._captured: tuple[int, int] | None = None  # (optimizer, global_step) of the latest capture
        self._written = 0  # findings already written as text
        self._paused: contextlib.ExitStack | None = None
        self._faults: dict[str, int] = {}

    def __repr__(self) -> str:
        args = [f"every={self.every}"]
        if self.alerts is not True:
            args.append(f"alerts={self.alerts!r}")
        if self.jsonl is not None:
            args.append(f"jsonl={os.fspath(self.jsonl)!r}")
        if not self._log:
            args.append("log=False")
        if self.prefix != "gradwise":
            args.append(f"prefix={self.prefix!r}")
        return f"GradwiseCallback({', '.join(args)})"

    # --- what it found --------------------------------------------------------------------------

    @property
    def findings(self) -> list[Finding]:
        """The alerts (:class:`~gradwise.doctor.Finding`, ``step`` the 1-based optimizer step)."""
        return [] if self.monitor is None else self.monitor.findings

    @property
    def history(self) -> list[dict]:
        """The recorded steps (dicts, as in the monitor's JSONL log): the first 1,000 and the latest 9,000."""
        return [] if self.monitor is None else self.monitor.all_history()

    @property
    def internal_errors(self) -> list[str]:
        """The monitor's and this callback's own faults (caught and counted, never raised into ``fit``)."""
        mine = [f"{text} ({n} times)" if n > 1 else text for text, n in self._faults.items()]
        return ([] if self.monitor is None else self.monitor.internal_errors) + mine

    # --- Lightning hooks ------------------------------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._detach()  # a previous fit that ended without its end hooks
        mon = GradientMonitor(pl_module, every=self.every, alerts=self.alerts, jsonl=self.jsonl, _capture_at_step=False)
        mon.on_record = self._on_record
        self.monitor = mon
        self._trainer = trainer
        self._logged_at.clear()
        self._captured = None
        self._written = 0
        self._faults.clear()
        mon.attach()

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        mon = self.monitor
        if mon is None or not mon.attached:
            return
        if isinstance(optimizer, LightningOptimizer):
            optimizer = optimizer.optimizer
        # Lightning calls this hook from the step's closure, which LBFGS evaluates several times per step
        key = (id(optimizer), trainer.global_step)
        if key == self._captured:
            return
        self._captured = key
        before = mon.steps
        try:
            mon.capture(optimizer)
        except Exception as exc:  # never into the training loop (an alert, a BaseException, passes)
            self._fault("capturing a step", exc)
            return
        if mon.steps != before and (mon.steps - 1) % self.every == 0:  # a recorded step
            index = next((i for i, o in enumerate(trainer.optimizers) if o is optimizer), 0)
            self._logged_at[mon.steps] = (_logger_step(trainer), index)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._resume()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._detach()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._detach()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._detach()

    # --- internals ------------------------------------------------------------------------------

    def _detach(self) -> None:
        self._resume()
        mon = self.monitor
        if mon is None or not mon.attached:
            return
        mon.detach()  # a pending localisation of a non-finite value ends here, with a finding
        self._write_findings()
        self._trainer = None
        errors = self.internal_errors
        if errors:
            rank_zero_warn(
                f"GradwiseCallback: {len(errors)} internal error(s) of the gradient monitor (the figures they touch "
                f"are missing): {'; '.join(errors[:3])}"
            )

    def _pause(self) -> None:
        # the monitor's instrumentation's quiet(): its hooks return at once (it has no public pause)
        inst = getattr(self.monitor, "_inst", None)
        if self._paused is None and inst is not None and self.monitor.attached:
            self._paused = contextlib.ExitStack()
            self._paused.enter_context(inst.quiet())

    def _resume(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.close()

    def _on_record(self, record: dict) -> None:
        # called from the optimizer's step: a fault here must neither break the run nor stop an alert
        try:
            trainer = self._trainer
            if trainer is None:
                return
            step, index = self._logged_at.pop(record["step"], (_logger_step(trainer), 0))
            if self._log and trainer.is_global_zero:
                metrics = self._metrics(record, index if len(trainer.optimizers) > 1 else None)
                if metrics:
                    for logger in trainer.loggers:
                        logger.log_metrics(metrics, step=step)
            self._write_findings(step)
        except Exception as exc:
            self._fault("logging a record", exc)

    def _fault(self, where: str, exc: Exception) -> None:
        text = f"{where}: {type(exc).__name__}: {exc}"
        self._faults[text] = self._faults.get(text, 0) + 1

    def _metrics(self, record: dict, optimizer: int | None) -> dict[str, float]:
        p = self.prefix
        out: dict[str, float] = {}
        for name, figures in record["params"].items():
            for key in _PARAM_FIGURES:
                if figures.get(key) is not None:
                    out[f"{p}/{key}/{name}"] = figures[key]
        for name, figures in record["modules"].items():
            for key in _MODULE_FIGURES:
                if figures.get(key) is not None:
                    out[f"{p}/{key}/{name}"] = figures[key]
        suffix = "" if optimizer is None else f"/optimizer_{optimizer}"
        for key in ("grad_norm_total", "loss"):
            if record.get(key) is not None:
                out[f"{p}/{key}{suffix}"] = record[key]
        return out

    def _write_findings(self, step: int | None = None) -> None:
        """The findings not written yet, as text on the TensorBoard loggers (rank 0)."""
        mon, trainer = self.monitor, self._trainer
        if mon is None or trainer is None:
            return
        new = mon.findings[self._written :]
        self._written = len(mon.findings)
        if not new or not self._log or not trainer.is_global_zero:
            return
        if step is None:
            step = _logger_step(trainer)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                write_findings(_Prefixed(logger.experiment, self.prefix), [f.to_dict() for f in new], step)


def _logger_step(trainer: pl.Trainer) -> int:
    """The step Lightning logs this batch's ``self.log`` metrics at."""
    step = getattr(getattr(trainer.fit_loop, "epoch_loop", None), "_batches_that_stepped", None)
    return trainer.global_step if step is None else step


class _Prefixed:
    """A writer whose ``add_text`` tags start with ``prefix`` instead of ``gradwise``."""

    def __init__(self, writer: Any, prefix: str):
        self.writer = writer
        self.prefix = prefix

    def add_text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(self.prefix + tag.removeprefix("gradwise"), text, step)
