"""Run a worker script in several local processes joined by a gloo process group.

A worker reads ``rank, world, port, out`` (and any extra arguments) from ``sys.argv[1:]``,
calls ``dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", ...)``,
saves its result with ``torch.save(..., out)`` and ends with :data:`WORKER_EXIT`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# a worker's last lines: nobody tears down while a peer still talks, and the interpreter's own
# teardown is skipped (gloo's threads aborted a process there once)
WORKER_EXIT = """
dist.barrier()
dist.destroy_process_group()
sys.stdout.flush()
os._exit(0)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(tmp_path: Path, source: str, world: int, *extra: str, timeout: float = 300) -> list:
    """Start ``world`` processes of ``source``, wait for all, and return what each saved."""
    script = tmp_path / "worker.py"
    script.write_text(source)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GLOO_SOCKET_IFNAME": "lo"}
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), str(world), str(port), str(tmp_path / f"{rank}.pt"), *extra],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(world)
    ]
    errors = [p.communicate(timeout=timeout)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * world, errors
    return [torch.load(tmp_path / f"{rank}.pt", weights_only=False) for rank in range(world)]
