"""The bundled examples under ``examples/``, loaded as modules or run as scripts."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_example(name: str) -> ModuleType:
    """``examples/<name>.py`` imported as a module (its ``__main__`` block does not run)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_example(name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python examples/<name>.py ARGS`` from the repository root."""
    return subprocess.run(
        [sys.executable, f"examples/{name}.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
