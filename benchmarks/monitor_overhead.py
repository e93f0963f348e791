"""Time of a training step under ``gw.doctor.monitor(every=1)`` next to the same step without it.

Run from the repository root::

    python benchmarks/monitor_overhead.py [--threads N] [--quick]

The CPU benchmark models of ``doctor_overhead.py`` (a small CNN, B=64, 1x28x28; an MLP 4 x
512, B=256; a transformer encoder block, d=128, B=32, T=64): forward, cross-entropy,
backward and an Adam step, timed as the median over interleaved blocks of 20 steps, plain,
under the monitor at ``every=1`` and at ``every=10``, in the same run. The monitor's work
per recorded step: the gradient and weight norms (``torch._foreach_norm``), a copy of the
weights and the norm of the update, the activations' dead/saturated reductions, one host
transfer. The goal is at most 1.05x at ``every=1``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

import gradwise as gw
from benchmarks.doctor_overhead import MODELS, header, training_step

_STEPS = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 5 if args.quick else 21
    print(header())
    print("| model | plain step (ms) | monitor every=1 (ms) | ratio | monitor every=10 (ms) | ratio |")
    print("|---|---|---|---|---|---|")
    for name, make in MODELS:
        model, opt, step = training_step(make)

        def block(under, step=step):
            with under():
                start = time.perf_counter()
                for _ in range(_STEPS):
                    step()
                return (time.perf_counter() - start) / _STEPS

        modes = {
            "plain": contextlib.nullcontext,
            "every1": lambda model=model, opt=opt: gw.doctor.monitor(model, opt, every=1),
            "every10": lambda model=model, opt=opt: gw.doctor.monitor(model, opt, every=10),
        }
        for _ in range(5):
            step()
        times: dict = {mode: [] for mode in modes}
        for _ in range(repeats):  # interleaved, so that drifts of the machine hit all alike
            for mode, under in modes.items():
                times[mode].append(block(under))
        plain, one, ten = (statistics.median(times[m]) for m in modes)
        print(
            f"| {name} | {plain * 1e3:.2f} | {one * 1e3:.2f} | {one / plain:.3f} | {ten * 1e3:.2f} | "
            f"{ten / plain:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
