"""Collectives for a fit over shards: sums, counts and candidates all-reduced with
torch.distributed, each wait bounded by a timeout. A single process is a world of one,
so the single-process fit runs the same code."""

from __future__ import annotations

from datetime import timedelta

import torch

from gradwise.errors import ArgumentError, GradwiseError


class PeerTimeoutError(GradwiseError, TimeoutError):
    """A peer process did not join a collective within the timeout."""


class Comm:
    def __init__(self, api: str, distributed: bool, timeout: float):
        self.api = api
        self.timeout = timeout
        if not distributed:
            self.world, self.rank = 1, 0
            return
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise ArgumentError(
                f"{api}: distributed=True needs an initialised torch.distributed process group "
                f"(call torch.distributed.init_process_group first)"
            )
        self.dist = dist
        self.world, self.rank = dist.get_world_size(), dist.get_rank()

    def _wait(self, work, what: str) -> None:
        try:
            work.wait(timeout=timedelta(seconds=self.timeout))
        except RuntimeError as exc:
            raise PeerTimeoutError(
                f"{self.api}: rank {self.rank} waited more than {self.timeout:g} s for the other processes in "
                f"{what} ({exc}); did every process call fit(..., distributed=True) with the same settings, "
                f"and is every peer alive?"
            ) from exc

    def sum(self, t: torch.Tensor, what: str = "all_reduce") -> torch.Tensor:
        """Sum over processes, in place (returns ``t``)."""
        if self.world > 1:
            self._wait(self.dist.all_reduce(t, async_op=True), what)
        return t

    def gather(self, t: torch.Tensor, what: str = "all_gather") -> list[torch.Tensor]:
        """Every process's ``t`` (same shape everywhere), in rank order."""
        if self.world == 1:
            return [t]
        out = [torch.empty_like(t) for _ in range(self.world)]
        self._wait(self.dist.all_gather(out, t, async_op=True), what)
        return out

    def offsets(self, n_local: int, device) -> tuple[int, int]:
        """This process's first global index and the global count."""
        sizes = torch.stack(self.gather(torch.tensor([n_local], device=device), "sharing the shard sizes"))
        sizes = sizes.reshape(-1).tolist()
        return sum(sizes[: self.rank]), sum(sizes)
