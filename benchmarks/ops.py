"""Forward + backward time of each ``gradwise.ops`` op next to what people write without it.

Run from the repository root::

    python benchmarks/ops.py [--quick] [--device cuda] [--dtype bfloat16] [--sizes 4096x1024 256x64x512]
                             [--threads N]

``--quick`` times one short round on the first size only (about half a minute on two
CPU cores); the default run takes a few minutes there.

Each timed step is the op on ``logits`` (requires grad), the loss ``(y * w).sum()`` with
a fixed random ``w``, and ``torch.autograd.grad(loss, logits)``. Every gradwise row is
paired with a reference timed in the same run on the same inputs:

- sampling ops next to ``torch.nn.functional.gumbel_softmax`` (``gumbel_topk``, which
  PyTorch has no counterpart of, next to a naive Gumbel-top-k straight-through snippet);
- deterministic ops next to the naive straight-through snippet written inline below
  (``one_hot(argmax) - p.detach() + p`` with ``p = softmax(logits / tau)``, its top-k
  version with ``k * softmax``, and ``x + (x.round() - x).detach()``).

The ratio is gradwise time / reference time (below 1: gradwise is faster). Times are
medians of ``torch.utils.benchmark.Timer.blocked_autorange``; on CUDA the Timer
synchronises, so they are GPU times. Each row times its op and its reference in turn,
over a few rounds, so that a change in machine load hits both; the reference is timed
again for every row, and the spread of its times down the column shows how noisy the
run was. On a machine shared with other work, ``--threads 1`` gives steadier CPU times.

On CUDA with triton installed, every gradwise row is timed on both paths of
``GRADWISE_KERNELS`` (``torch``: the reference; ``triton``: the kernels, see
``gradwise/ops/_kernels``), and each row gets its memory-traffic floor: the bytes the op
itself must move (forward: read logits, write the output; backward: read the incoming
gradient and the logits, write the gradient; sampling ops also write and twice read 4-byte
random bits), over a device-to-device copy bandwidth measured in the same run, and the
fraction of that floor reached (floor / time). On CPU there is no figure it could honestly
use: the GPU columns say "not measured".
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.benchmark import Timer

import gradwise as gw

TAU = 1.0
K = 8
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# 256x64x512 in float32 is 32 MiB, glibc's largest mmap threshold: on CPU every such tensor
# is mapped and page-faulted afresh, so that shape is slower per element than the first.
DEFAULT_SIZES = ("4096x1024", "256x64x512")

Op = Callable[[torch.Tensor], torch.Tensor]


# --- references: what one writes without gradwise ----------------------------------------


def naive_st_argmax(logits: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits / TAU, -1)
    y = F.one_hot(p.argmax(-1), logits.shape[-1]).to(p.dtype)
    return y - p.detach() + p


def naive_st_topk(logits: torch.Tensor) -> torch.Tensor:
    p = K * torch.softmax(logits / TAU, -1)
    y = torch.zeros_like(p).scatter_(-1, p.topk(K, -1).indices, 1.0)
    return y - p.detach() + p


def naive_st_gumbel_topk(logits: torch.Tensor) -> torch.Tensor:
    gumbels = -torch.empty_like(logits).exponential_().log()
    p = K * torch.softmax(logits / TAU, -1)
    y = torch.zeros_like(p).scatter_(-1, (logits + gumbels).topk(K, -1).indices, 1.0)
    return y - p.detach() + p


def naive_st_round(x: torch.Tensor) -> torch.Tensor:
    return x + (x.round() - x).detach()


def naive_st_sign(x: torch.Tensor) -> torch.Tensor:
    return x + (x.sign() - x).detach()


REFERENCES: dict[str, Op] = {
    "F.gumbel_softmax(hard=True)": lambda x: F.gumbel_softmax(x, TAU, hard=True),
    "F.gumbel_softmax(hard=False)": lambda x: F.gumbel_softmax(x, TAU, hard=False),
    "naive ST argmax": naive_st_argmax,
    "naive ST top-k": naive_st_topk,
    "naive ST Gumbel-top-k": naive_st_gumbel_topk,
    "naive ST round": naive_st_round,
    "naive ST sign": naive_st_sign,
}


# --- the gradwise ops, each with its reference ----------------------------------------------


@dataclass(frozen=True)
class Case:
    label: str
    op: Op
    reference: str

    @property
    def sampling(self) -> bool:
        return self.label.startswith(("sample", "gumbel"))


def on_path(op: Op, path: str) -> Op:
    """``op`` run with ``GRADWISE_KERNELS=path`` (the switch is read at every call)."""

    def run(x: torch.Tensor) -> torch.Tensor:
        os.environ["GRADWISE_KERNELS"] = path
        return op(x)

    return run


def floor_bytes(case: Case, numel: int, itemsize: int) -> int:
    """Bytes the op must move in one forward + backward (see the module docstring)."""
    return numel * (5 * itemsize + (12 if case.sampling else 0))


def gradwise_cases() -> list[Case]:
    ops = gw.ops
    cases = [
        Case(
            f'argmax_onehot(estimator="{e}")',
            lambda x, e=e: ops.argmax_onehot(x, estimator=e, tau=TAU),
            "naive ST argmax",
        )
        for e in ("st", "softmax", "reinmax")
    ]
    cases += [
        Case(
            f'sample_onehot(estimator="{e}")',
            lambda x, e=e: ops.sample_onehot(x, estimator=e, tau=TAU),
            "F.gumbel_softmax(hard=True)",
        )
        for e in ("gumbel", "reinmax", "gumbel-rao")
    ]
    cases += [
        Case(
            f"gumbel_softmax(hard={h})",
            lambda x, h=h: ops.gumbel_softmax(x, TAU, hard=h),
            f"F.gumbel_softmax(hard={h})",
        )
        for h in (True, False)
    ]
    cases += [
        Case(f"topk_mask(k={K})", lambda x: ops.topk_mask(x, K, tau=TAU), "naive ST top-k"),
        Case(f"gumbel_topk(k={K})", lambda x: ops.gumbel_topk(x, K, tau=TAU), "naive ST Gumbel-top-k"),
        Case("round_ste", ops.round_ste, "naive ST round"),
        Case("sign_ste", ops.sign_ste, "naive ST sign"),
    ]
    return cases


# --- timing ------------------------------------------------------------------------------------


def make_timer(op: Op, logits: torch.Tensor, w: torch.Tensor) -> Timer:
    """A Timer of one forward + backward step of ``op``."""

    def step() -> None:
        loss = (op(logits) * w).sum()
        torch.autograd.grad(loss, logits)

    return Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads())


def paired_times(timers: list[Timer], rounds: int, min_run_time: float) -> list[list[float]]:
    """Per-run times in seconds of each timer, measured in turn ``rounds`` times over, so
    that a change in machine load during the run hits every timer of the list alike.

    ``blocked_autorange`` runs the statement untimed to size its blocks before it
    measures: that is the warm-up (first-call allocations, lazy initialisation).
    """
    times: list[list[float]] = [[] for _ in timers]
    for _ in range(rounds):
        for timer, samples in zip(timers, times, strict=True):
            samples += timer.blocked_autorange(min_run_time=min_run_time).times
    return times


def copy_bandwidth(device: torch.device, min_run_time: float) -> float:
    """Device-to-device copy bandwidth measured now, in bytes per second (read + write)."""
    nbytes = 1 << 28  # well past any cache
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    timer = Timer(stmt="dst.copy_(src)", globals={"src": src, "dst": dst})
    seconds = timer.blocked_autorange(min_run_time=min_run_time).median
    return 2 * nbytes / seconds


# --- report ------------------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fmt_ms(ms: float) -> str:
    decimals = 0 if ms >= 100 else 1 if ms >= 10 else 2 if ms >= 1 else 3
    return f"{ms:.{decimals}f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(wd) for c, wd in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(header), line(["-" * wd for wd in widths]), *(line(r) for r in rows)])


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(n) for n in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is sizes joined by 'x', like 4096x1024 (got {text!r})") from None
    if not shape or min(shape) < 1 or shape[-1] < K:
        raise argparse.ArgumentTypeError(f"every size must be >= 1 and the last >= k={K} (got {text!r})")
    return shape


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda[:i]")
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=parse_shape,
        metavar="AxB[xC]",
        help=f"logits shapes, classes last (default: {' '.join(DEFAULT_SIZES)}; with --quick, {DEFAULT_SIZES[0]})",
    )
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--quick", action="store_true", help="one short timing round, first size only (noisier)")
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="CPU threads (default: %(default)s)"
    )
    args = parser.parse_args()
    args.device = torch.device(args.device)
    if args.sizes is None:
        args.sizes = [parse_shape(s) for s in (DEFAULT_SIZES[:1] if args.quick else DEFAULT_SIZES)]
    if args.threads < 1:
        parser.error(f"--threads must be >= 1 (got {args.threads})")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available in this torch build or on this machine")
    return args


def main() -> None:
    args = parse_args()
    device, dtype = args.device, DTYPES[args.dtype]
    rounds, min_run_time = (1, 0.1) if args.quick else (3, 0.3)
    torch.set_num_threads(args.threads)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # the Timer synchronises the current device
    start = time.perf_counter()

    print(f"gradwise {gw.__version__}, torch {torch.__version__}, Python {platform.python_version()}")
    print(f"device: {device} ({device_name(device)}), threads: {torch.get_num_threads()}, dtype: {args.dtype}")
    print(
        f"step: forward + backward of (op(logits) * w).sum(), tau={TAU}; median over {rounds} round(s) "
        f"of Timer.blocked_autorange(min_run_time={min_run_time}), op and reference in turn"
    )
    print()

    cases = gradwise_cases()
    generator = torch.Generator().manual_seed(0)
    kernels = device.type == "cuda" and gw._optional.has("triton")
    bandwidth = copy_bandwidth(device, min_run_time) if device.type == "cuda" else None
    itemsize = torch.empty((), dtype=dtype).element_size()
    rows = []
    for shape in args.sizes:
        logits = torch.randn(shape, generator=generator).to(device, dtype).requires_grad_()
        w = torch.randn(shape, generator=generator).to(device, dtype)
        shape_text = "x".join(map(str, shape))
        for case in cases:
            ops = [on_path(case.op, "torch")] + ([on_path(case.op, "triton")] if kernels else [])
            timers = [make_timer(op, logits, w) for op in ops] + [make_timer(REFERENCES[case.reference], logits, w)]
            *ms, ref = (statistics.median(times) * 1e3 for times in paired_times(timers, rounds, min_run_time))
            best = min(ms)
            row = [case.label, shape_text, fmt_ms(ms[0]), fmt_ms(ms[1]) if kernels else "-"]
            row += [case.reference, fmt_ms(ref), f"{best / ref:.2f}"]
            if bandwidth is None:
                row += ["not measured", "not measured"]
            else:
                floor = floor_bytes(case, math.prod(shape), itemsize) / bandwidth * 1e3
                row += [fmt_ms(floor), f"{floor / best:.0%}"]
            rows.append(row)
    os.environ.pop("GRADWISE_KERNELS", None)

    header = ["op", "shape", "gradwise torch (ms)", "gradwise triton (ms)", "reference", "reference (ms)"]
    header += ["ratio (best / reference)", "GPU floor (ms)", "floor / time"]
    print(markdown_table(header, rows))
    if bandwidth is not None:
        print(f"\nfloor bandwidth: {bandwidth / 1e9:.0f} GB/s (a device-to-device copy measured in this run)")

    print()
    print(f"total run time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
