"""Time per Lloyd iteration and final inertia: gradwise.cluster.KMeans next to scikit-learn,
a plain torch matmul Lloyd loop and fast-pytorch-kmeans, in the same run.

Run from the repository root::

    python -m benchmarks.kmeans [--quick] [--device cuda] [--threads N] [--iters 10] [--repeats 3]

Every method fits the same float32 data from the same initial centres (k-means++ from
gradwise, passed as an array) for a fixed number of iterations (``tol=0``), so they do the
same work; the time of a whole fit is divided by the iterations run (setup included:
validation, the data mean, scikit-learn's copy of X). The fits are timed in turn, one of
each per round, and the median over ``--repeats`` rounds is printed, so that a change in
machine load hits every column alike.

Columns: gradwise on its torch path (``GRADWISE_KERNELS=torch``: the chunked CPU pass, and
the reference on CUDA) and on its Triton path (the fused kernel; CUDA only, "not measured"
elsewhere); scikit-learn (always on the CPU); "torch matmul": the plain Lloyd loop a user
would write, ``|x|^2 - 2 X C^T + |c|^2``, ``argmin``, ``index_add_`` on the whole ``N x K``
matrix; fast-pytorch-kmeans when it is installed. Ratio = gradwise's best path / scikit-learn
(below 1: gradwise is faster). On CUDA the floor of one iteration is the larger of reading X
once at the copy bandwidth and the distance GEMM's ``2 N D K`` FLOPs at the float32 matmul
throughput, both measured in this run (a device-to-device copy, a large ``torch.mm`` at the
current ``float32_matmul_precision``); the fraction is floor / time. On the CPU no floor is
printed. "labels = argmin" checks gradwise's final labels against a float64 argmin.

Note for this project's machines: OPENBLAS_CORETYPE is set in the environment for old
OpenBLAS builds and slows NumPy's BLAS; the header prints it so the numbers can be read
with that in mind.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import numpy as np
import torch

import gradwise as gw
from benchmarks.ops import copy_bandwidth, device_name, fmt_ms, markdown_table

SIZES = [(100_000, 32, 64), (1_000_000, 64, 256)]
GPU_SIZES = [*SIZES, (1_000_000, 128, 1024)]


def make_data(n: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=4.0, size=(k, d)).astype(np.float32)
    return (means[rng.integers(k, size=n)] + rng.normal(size=(n, d)).astype(np.float32)).astype(np.float32)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def torch_matmul_lloyd(X: torch.Tensor, init: torch.Tensor, iters: int) -> tuple[torch.Tensor, int]:
    """The plain Lloyd loop on the whole distance matrix (what gradwise is compared with on a GPU)."""
    centers = init.clone()
    x_sq = (X * X).sum(1, keepdim=True)
    for _ in range(iters):
        d = x_sq - 2 * X @ centers.T + (centers * centers).sum(1)
        labels = d.argmin(1)
        sums = torch.zeros_like(centers).index_add_(0, labels, X)
        counts = torch.bincount(labels, minlength=len(centers)).to(X.dtype)
        centers = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centers)
    return centers, iters


def exact_labels(X: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """The float64 argmin of the distances, 65,536 rows at a time."""
    c = centers.double()
    return torch.cat([torch.cdist(x.double(), c).argmin(1) for x in X.split(65536)])


def gradwise_fit(path: str, X: torch.Tensor, init: torch.Tensor, iters: int):
    os.environ["GRADWISE_KERNELS"] = path
    return gw.cluster.KMeans(len(init), init=init, max_iter=iters, tol=0.0).fit(X)


def gemm_throughput(device: torch.device, d: int, k: int) -> float:
    """FLOP/s of ``(N, d) @ (d, k)`` at the current float32 matmul precision, measured now."""
    a = torch.randn(1 << 20, d, device=device)
    b = torch.randn(d, k, device=device)
    out = torch.empty(1 << 20, k, device=device)
    for _ in range(3):
        torch.mm(a, b, out=out)
    sync(device)
    start, reps = time.perf_counter(), 20
    for _ in range(reps):
        torch.mm(a, b, out=out)
    sync(device)
    return 2 * a.shape[0] * d * k * reps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch and OpenMP threads (default: all)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of fits (the median is printed)")
    parser.add_argument("--quick", action="store_true", help="the small size only, 5 iterations, 1 round")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    from sklearn.cluster import KMeans as SKKMeans

    try:
        from fast_pytorch_kmeans import KMeans as FastKMeans
    except ImportError:
        FastKMeans = None

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    triton = on_gpu and gw._optional.has("triton")
    sizes = SIZES[:1] if args.quick else GPU_SIZES if on_gpu else SIZES
    iters, repeats = (5, 1) if args.quick else (args.iters, args.repeats)
    print(f"gradwise {gw.__version__}, torch {torch.__version__}, numpy {np.__version__}")
    print(
        f"device: {device} ({device_name(device)}), torch threads: {torch.get_num_threads()}, "
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')}, "
        f"float32 matmul precision: {torch.get_float32_matmul_precision()}"
    )
    print(f"{iters} Lloyd iterations from the same k-means++ centres, float32, tol=0, median of {repeats} round(s)\n")
    bandwidth = copy_bandwidth(device, 0.3) if on_gpu else None

    header = ["N x D, K", "gradwise torch (ms/iter)", "gradwise triton (ms/iter)", "scikit-learn (ms/iter)"]
    header += ["ratio (gradwise / scikit-learn)", "torch matmul (ms/iter)"]
    header += ["fast-pytorch-kmeans (ms/iter)"] if FastKMeans is not None else []
    header += ["GPU floor (ms)", "floor / time", "inertia gradwise", "inertia scikit-learn", "labels = argmin"]
    rows = []
    saved = os.environ.get("GRADWISE_KERNELS")
    try:
        for n, d, k in sizes:
            X = make_data(n, d, k)
            Xt = torch.from_numpy(X).to(device)
            init = gw.cluster.KMeans(k, random_state=0, max_iter=1).fit(Xt).cluster_centers_  # the shared start
            init_np = init.cpu().numpy()
            fits = {
                "torch": lambda Xt=Xt, init=init: gradwise_fit("torch", Xt, init, iters),
                "sklearn": lambda X=X, init_np=init_np: SKKMeans(
                    len(init_np), init=init_np, n_init=1, max_iter=iters, tol=0.0
                ).fit(X),
                "matmul": lambda Xt=Xt, init=init: torch_matmul_lloyd(Xt, init, iters),
            }
            if triton:
                fits["triton"] = lambda Xt=Xt, init=init: gradwise_fit("triton", Xt, init, iters)
            if FastKMeans is not None:
                fits["fast"] = lambda Xt=Xt, init=init, k=k: FastKMeans(
                    n_clusters=k, max_iter=iters, tol=-1.0, verbose=0
                ).fit_predict(Xt, centroids=init.clone())
            times: dict[str, list[float]] = {name: [] for name in fits}
            models = {}
            for _ in range(repeats):
                for name, fit in fits.items():
                    sync(device)
                    start = time.perf_counter()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        models[name] = fit()
                    sync(device)
                    n_iter = getattr(models[name], "n_iter_", iters)
                    times[name].append((time.perf_counter() - start) / n_iter)
            ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
            ours = min(ms["torch"], ms.get("triton", float("inf")))
            best = models["triton" if ms.get("triton", float("inf")) < ms["torch"] else "torch"]
            exact = exact_labels(Xt, best.cluster_centers_)
            row = [f"{n:,} x {d}, {k}", fmt_ms(ms["torch"]), fmt_ms(ms["triton"]) if triton else "not measured"]
            row += [fmt_ms(ms["sklearn"]), f"{ours / ms['sklearn']:.2f}", fmt_ms(ms["matmul"])]
            row += [fmt_ms(ms["fast"])] if FastKMeans is not None else []
            if bandwidth is None:
                row += ["not measured", "not measured"]
            else:
                floor = max(n * d * 4 / bandwidth, 2 * n * d * k / gemm_throughput(device, d, k)) * 1e3
                row += [fmt_ms(floor), f"{floor / ours:.0%}"]
            row += [f"{best.inertia_:.6g}", f"{models['sklearn'].inertia_:.6g}"]
            row += ["yes" if torch.equal(exact, best.labels_.to(exact.device)) else "NO"]
            rows.append(row)
            print(f"  measured {row[0]}", flush=True)
    finally:
        if saved is None:
            os.environ.pop("GRADWISE_KERNELS", None)
        else:
            os.environ["GRADWISE_KERNELS"] = saved
    print()
    print(markdown_table(header, rows))
    if bandwidth is not None:
        print(f"\nfloor bandwidth: {bandwidth / 1e9:.0f} GB/s (a device-to-device copy measured in this run)")


if __name__ == "__main__":
    main()
