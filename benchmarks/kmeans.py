"""Time per Lloyd iteration and final inertia: gradwise.cluster.KMeans next to scikit-learn.

Run from the repository root::

    python benchmarks/kmeans.py [--quick] [--device cuda] [--threads N] [--iters 10]

Both fit the same float32 data from the same initial centres (k-means++ from gradwise,
passed to both as an array) for a fixed number of iterations (``tol=0``), so they do the
same work; the time of a whole ``fit`` is divided by the iterations run (setup included:
validation, the data mean, scikit-learn's copy of X). fast-pytorch-kmeans is timed too
when it is installed. Ratio = gradwise time / scikit-learn time (below 1: gradwise is
faster). On CUDA, gradwise runs on the GPU and scikit-learn on the CPU.

Note for this project's machines: OPENBLAS_CORETYPE is set in the environment for old
OpenBLAS builds and slows NumPy's BLAS; the header prints it so the numbers can be read
with that in mind.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings

import numpy as np
import torch

import gradwise as gw


def make_data(n: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=4.0, size=(k, d)).astype(np.float32)
    return (means[rng.integers(k, size=n)] + rng.normal(size=(n, d)).astype(np.float32)).astype(np.float32)


def time_fit(fit, iters_of) -> tuple[float, float, int]:
    start = time.perf_counter()
    model = fit()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    inertia, n_iter = iters_of(model)
    return seconds / n_iter, inertia, n_iter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch and OpenMP threads (default: all)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="the small size only, 5 iterations")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    from sklearn.cluster import KMeans as SKKMeans

    try:
        from fast_pytorch_kmeans import KMeans as FastKMeans
    except ImportError:
        FastKMeans = None

    sizes = [(100_000, 32, 64)] if args.quick else [(100_000, 32, 64), (1_000_000, 64, 256)]
    iters = 5 if args.quick else args.iters
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"gradwise {gw.__version__}, torch {torch.__version__}, numpy {np.__version__}")
    print(
        f"device: {device} ({name}), torch threads: {torch.get_num_threads()}, "
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')}"
    )
    print(f"{iters} Lloyd iterations from the same k-means++ centres, float32, tol=0\n")
    header = (
        "| N x D, K | gradwise (ms/iter) | scikit-learn (ms/iter) | ratio | inertia gradwise | inertia scikit-learn |"
    )
    if FastKMeans is not None:
        header += " fast-pytorch-kmeans (ms/iter) |"
    print(header)
    print("|" + "|".join("---" for _ in header.split("|")[1:-1]) + "|")
    for n, d, k in sizes:
        X = make_data(n, d, k)
        Xt = torch.from_numpy(X).to(device)
        init = gw.cluster.KMeans(k, random_state=0, max_iter=1).fit(Xt).cluster_centers_  # the shared start
        ours = time_fit(
            lambda k=k, init=init, Xt=Xt: gw.cluster.KMeans(k, init=init, max_iter=iters, tol=0.0).fit(Xt),
            lambda m: (m.inertia_, m.n_iter_),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = time_fit(
                lambda k=k, init=init, X=X: SKKMeans(k, init=init.cpu().numpy(), n_init=1, max_iter=iters, tol=0.0).fit(
                    X
                ),
                lambda m: (m.inertia_, m.n_iter_),
            )
        row = (
            f"| {n:,} x {d}, {k} | {ours[0] * 1e3:.1f} | {ref[0] * 1e3:.1f} | {ours[0] / ref[0]:.2f} "
            f"| {ours[1]:.6g} | {ref[1]:.6g} |"
        )
        if FastKMeans is not None:
            start = time.perf_counter()
            FastKMeans(n_clusters=k, max_iter=iters, tol=-1.0, verbose=0).fit_predict(Xt, centroids=init.clone())
            row += f" {(time.perf_counter() - start) / iters * 1e3:.1f} |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
