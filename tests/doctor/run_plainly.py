"""Run corpus scripts plainly, as ``python SCRIPT`` would, in one process (importing torch
once instead of once per script), and print one JSON line per script:
``{"path", "exit", "exception", "stdout"}`` (``exit`` 0 when the script returns or exits 0).

Usage: ``python -m tests.doctor.run_plainly SCRIPT...``
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import sys
import traceback


def run(path: str) -> dict:
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [path]
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    out, code, exception = io.StringIO(), 0, None
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(path, run_name="__main__")
    except SystemExit as exc:
        code = 0 if exc.code in (None, 0) else 1
    except Exception as exc:
        code = 1
        exception = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    return {"path": path, "exit": code, "exception": exception, "stdout": out.getvalue()}


if __name__ == "__main__":
    for script in sys.argv[1:]:
        print(json.dumps(run(script)), flush=True)
