"""Time of one training step under ``gw.doctor.watch()`` next to the same step without it.

Run from the repository root::

    python benchmarks/doctor_overhead.py [--threads N] [--quick]

For a small CNN (B=64, 1x28x28), an MLP (4 x 512, B=256) and a small transformer encoder
block (d=128, 4 heads, B=32, T=64): forward, cross-entropy, backward and an Adam step,
timed as the median step over fresh blocks of 8 steps (the length of a ``gradwise doctor``
run: a watch is a few steps, and its first steps are its costliest), plain, under
``detect_anomaly`` and under the doctor, in the same run. The
doctor's cost is the recording of every torch operation in Python (a TorchFunctionMode)
and the checks at each backward(), the numerics included (a device-side sum per operation,
a hook per autograd node, the gradient norms read once per step); the target is at most
1.5x. ``torch.autograd.detect_anomaly`` (which sees only the backward) is timed in the same
run for comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

import gradwise as gw

_STEPS = 8


def cnn():
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 10),
    )
    return model, torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))


def mlp():
    layers = []
    for _ in range(4):
        layers += [nn.Linear(512, 512), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(512, 10)), torch.randn(256, 512), torch.randint(0, 10, (256,))


def transformer():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.TransformerEncoderLayer(128, 4, 256, batch_first=True, dropout=0.0)
            self.head = nn.Linear(128, 10)

        def forward(self, x):
            return self.head(self.layer(x).mean(1))

    return Block(), torch.randn(32, 64, 128), torch.randint(0, 10, (32,))


MODELS = (("small CNN", cnn), ("MLP 4 x 512", mlp), ("transformer block", transformer))


def training_step(make):
    """A seeded model, its batch and Adam, and one training step of it (forward, cross-entropy,
    backward, step): ``(model, optimizer, step)``."""
    torch.manual_seed(0)
    model, x, y = make()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return model, opt, step


def header() -> str:
    return (
        f"gradwise {gw.__version__}, torch {torch.__version__}, {platform.processor() or 'cpu'}, "
        f"{torch.get_num_threads()} thread(s)\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 5 if args.quick else 25
    warnings.filterwarnings("ignore", message="Anomaly Detection has been enabled")
    print(header())
    print(
        "| model | plain step (ms) | torch.autograd.detect_anomaly (ms) | ratio | under gw.doctor.watch, all checks "
        "incl. numerics (ms) | ratio |"
    )
    print("|---|---|---|---|---|---|")
    for name, make in MODELS:
        _, _, step = training_step(make)

        def block(under, step=step):
            """The mean step of one block of 8 steps (the length of a `gradwise doctor` run)
            under a fresh ``under()``, and what it returned."""
            with under() as watching:
                start = time.perf_counter()
                for _ in range(_STEPS):
                    step()
                return (time.perf_counter() - start) / _STEPS, watching

        modes = {
            "plain": contextlib.nullcontext,
            "anomaly": lambda: torch.autograd.detect_anomaly(check_nan=True),
            "doctor": gw.doctor.watch,
        }
        for _ in range(3):
            step()  # warm up
        times: dict = {mode: [] for mode in modes}
        for _ in range(repeats):  # the three interleaved, so that drifts of the machine hit them alike
            for mode, under in modes.items():
                seconds, watching = block(under)
                times[mode].append(seconds)
                if mode == "doctor":
                    dr = watching
        plain, anomaly, watched = (statistics.median(times[mode]) for mode in modes)
        assert not [f for f in dr.findings if f.severity == "error"], dr.report()
        print(
            f"| {name} | {plain * 1e3:.2f} | {anomaly * 1e3:.2f} | {anomaly / plain:.2f} | {watched * 1e3:.2f} | "
            f"{watched / plain:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
