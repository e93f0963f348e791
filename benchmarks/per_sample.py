"""Time and peak memory of per-sample gradients and norms next to a normal training step.

Run from the repository root::

    python benchmarks/per_sample.py [--quick] [--device cuda] [--threads N] [--models cnn mlp transformer]

For each model, in one run and on the same inputs, the script times:

- ``step``: a normal training step, ``loss_fn(model(x), y).backward()`` (the reference of
  ``norms`` and ``clip``);
- ``gw norms``: ``gradwise.per_sample.norms``;
- ``gw clip``: ``gradwise.per_sample.clip_and_accumulate`` (norms, then a second backward);
- ``torch.func``: ``vmap(grad(loss of functional_call))`` over the batch, by hand (the
  reference of ``gw grads``);
- ``gw grads``: ``gradwise.per_sample.grads``;
- ``opacus``: Opacus' ``GradSampleModule`` forward + backward (per-sample gradients in
  ``p.grad_sample``; compared with ``torch.func``), when Opacus is installed; otherwise, or
  when Opacus refuses the model, the row says so.

Models: a small CNN on 28x28 inputs (B=256), an MLP with 4 hidden layers of 1024 (B=512),
a small transformer encoder (vocabulary 1000, d=128, 2 layers, 4 heads, B=64, T=128,
a token-level cross-entropy). ``--quick`` uses a quarter of each batch and a shorter
timing (about a minute on two CPU cores).

Times are medians of ``torch.utils.benchmark.Timer.blocked_autorange`` (CUDA: the Timer
synchronises); the full run times every method of a model in turn over three rounds and
reports the median round, so that a change in machine load hits all of them. Memory:

- CUDA: ``torch.cuda.max_memory_allocated`` during one call, minus what was allocated
  before it (parameters, inputs).
- CPU: the peak, over one call, of the bytes PyTorch's CPU allocator holds above what it
  held when the call started, from the ``[memory]`` events of
  ``torch.profiler.profile(profile_memory=True)`` (each allocation and free, in order).
  Parameters and inputs allocated before the call are not counted; ``.grad`` tensors
  created by the call are.

Ratios are against ``step`` for norms and clip and against ``torch.func`` for grads. On
a machine shared with other work, ``--threads 1`` gives steadier CPU times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils.benchmark import Timer

import gradwise.per_sample as ps

# functorch falls back to a loop for ops without a batching rule (attention on CPU); that is what torch.func does
warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
warnings.filterwarnings("ignore", message="Full backward hook is firing")  # Opacus' hooks on the first layer


class Transformer(nn.Module):
    def __init__(self, vocab: int = 1000, dim: int = 128, layers: int = 2, heads: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(idx))).transpose(1, 2)  # (B, V, T) for cross_entropy


def make(name: str, quick: bool, device: torch.device) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    if name == "cnn":
        batch = 64 if quick else 256
        model = nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(64 * 12 * 12, 128), nn.ReLU(), nn.Linear(128, 10),
        )  # fmt: skip
        x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    elif name == "mlp":
        batch = 128 if quick else 512
        layers: list[nn.Module] = []
        for _ in range(4):
            layers += [nn.Linear(1024, 1024), nn.ReLU()]
        model = nn.Sequential(*layers, nn.Linear(1024, 10))
        x, y = torch.randn(batch, 1024), torch.randint(0, 10, (batch,))
    else:
        batch = 16 if quick else 64
        model = Transformer()
        x, y = torch.randint(0, 1000, (batch, 128)), torch.randint(0, 1000, (batch, 128))
    return model.to(device), x.to(device), y.to(device)


def torch_func_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    params = {k: p.detach() for k, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(p, xi, yi):
        return F.cross_entropy(functional_call(model, (p, buffers), (xi.unsqueeze(0),)), yi.unsqueeze(0))

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)


def opacus_step(model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], None] | None:
    try:
        from opacus import GradSampleModule
    except ImportError:
        return None
    wrapped = GradSampleModule(model)

    def run(x: torch.Tensor, y: torch.Tensor) -> None:
        wrapped.zero_grad(set_to_none=True)
        F.cross_entropy(wrapped(x), y).backward()

    return run


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    current = peak = 0
    for event in sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"]):
        if event["args"].get("Device Type", 0) == 0:
            current += event["args"]["Bytes"]
            peak = max(peak, current)
    return peak


def measure(rows: list[tuple[str, Callable[[], object]]], device: torch.device, min_run_time: float, rounds: int):
    """Peak memory of one call each, then median times taken in turn over ``rounds`` rounds."""
    memory, times = {}, {label: [] for label, _ in rows}
    for label, fn in rows:
        fn()  # warm-up
        memory[label] = peak_bytes(fn, device)
    for _ in range(rounds):
        for label, fn in rows:
            timer = Timer(stmt="fn()", globals={"fn": fn})
            times[label].append(timer.blocked_autorange(min_run_time=min_run_time).median)
    return {label: (statistics.median(times[label]), memory[label]) for label, _ in rows}


def run_model(name: str, quick: bool, device: torch.device, min_run_time: float, rounds: int) -> list[tuple]:
    model, x, y = make(name, quick, device)

    def step():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    def clip():
        model.zero_grad(set_to_none=True)
        ps.clip_and_accumulate(model, F.cross_entropy, x, y, max_norm=1.0)

    # the per-sample norms of the two methods agree (a sanity check of the benchmark itself)
    small = slice(0, 4)
    reference = torch.cat([g.flatten(1) for g in torch_func_grads(model, x[small], y[small]).values()], 1).norm(dim=1)
    torch.testing.assert_close(ps.norms(model, F.cross_entropy, x[small], y[small]), reference, rtol=1e-3, atol=1e-5)

    rows: list[tuple[str, Callable[[], object]]] = [
        ("step", step),
        ("gw norms", lambda: ps.norms(model, F.cross_entropy, x, y)),
        ("gw clip", clip),
        ("torch.func", lambda: torch_func_grads(model, x, y)),
        ("gw grads", lambda: ps.grads(model, F.cross_entropy, x, y)),
    ]
    refs = {"gw norms": "step", "gw clip": "step", "gw grads": "torch.func", "opacus": "torch.func"}
    note = None
    try:
        opacus = opacus_step(make(name, quick, device)[0])
        if opacus is not None:
            opacus(x, y)
    except Exception as error:  # Opacus refuses some models (nn.MultiheadAttention needs its own DPMultiheadAttention)
        opacus, note = None, f"failed: {type(error).__name__}: {str(error).splitlines()[0][:70]}"
    if opacus is not None:
        rows.append(("opacus", lambda: opacus(x, y)))
    elif note is None:
        note = "not installed"
    results = measure(rows, device, min_run_time, rounds)
    table = [(name, x.shape[0], label, *results[label], refs.get(label), results) for label, _ in rows]
    if note is not None:
        table.append((name, x.shape[0], "opacus", None, None, note, results))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--models", nargs="+", default=["cnn", "mlp", "transformer"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    min_run_time, rounds = (0.2, 1) if args.quick else (0.5, 3)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, device {device}, "
          f"{torch.get_num_threads()} threads{', quick' if args.quick else ''}")  # fmt: skip
    print()
    print("| model | B | method | time (ms) | peak memory (MiB) | reference | time ratio | memory ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        for model, batch, label, seconds, memory, ref, results in run_model(
            name, args.quick, device, min_run_time, rounds
        ):
            if seconds is None:
                print(f"| {model} | {batch} | {label} | - | - | {ref} | - | - |")
                continue
            ratio_t = ratio_m = "-"
            if ref in results:
                ref_s, ref_m = results[ref]
                ratio_t = f"{seconds / ref_s:.2f}"
                ratio_m = f"{memory / ref_m:.2f}" if ref_m else "-"
            print(
                f"| {model} | {batch} | {label} | {seconds * 1e3:.1f} | {memory / 2**20:.1f} | {ref or ''} | "
                f"{ratio_t} | {ratio_m} |"
            )


if __name__ == "__main__":
    main()
