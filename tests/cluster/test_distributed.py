"""KMeans over shards in 2 and 3 gloo processes equals one process on the concatenated data;
a peer that does not join makes the others raise within the timeout instead of hanging."""

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs

from gradwise.cluster import KMeans
from tests.gloo import WORKER_EXIT, run_workers

ROOT = Path(__file__).resolve().parents[2]

WORKER = (
    textwrap.dedent(
        """
    import os, sys, time, numpy as np, torch, torch.distributed as dist
    from sklearn.datasets import make_blobs
    from gradwise.cluster import KMeans, PeerTimeoutError

    rank, world, port, out, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    X, _ = make_blobs(1000, 4, centers=7, cluster_std=1.5, random_state=0)
    w = np.random.RandomState(1).uniform(0.5, 2.0, size=len(X))
    bounds = np.linspace(0, len(X), world + 1).astype(int) + np.array([0] + [37] * (world - 1) + [0])  # uneven
    shard = slice(bounds[rank], bounds[rank + 1])
    results = {}
    if mode == "hang":
        if rank == 1:
            time.sleep(8)
        else:
            start = time.time()
            try:
                KMeans(7, random_state=0).fit(X[shard], distributed=True, timeout=2.0)
                results["raised"] = None
            except PeerTimeoutError as exc:
                results["raised"] = str(exc)
            results["seconds"] = time.time() - start
        torch.save(results, out)
        sys.exit(0)
    for init in ("k-means++", "random"):
        for algorithm in ("lloyd", "gradient"):
            km = KMeans(7, init=init, algorithm=algorithm, batch_size=10**6, random_state=3).fit(
                torch.tensor(X[shard]), sample_weight=torch.tensor(w[shard]), distributed=True
            )
            results[(init, algorithm)] = (km.cluster_centers_, km.inertia_, km.n_iter_, km.labels_)
    for algorithm in ("minibatch", "gradient"):  # mini-batches: the same centres on every process
        km = KMeans(7, algorithm=algorithm, batch_size=64, max_iter=5, random_state=3).fit(
            torch.tensor(X[shard]), distributed=True
        )
        results[("batches", algorithm)] = (km.cluster_centers_, km.inertia_, km.n_iter_, km.labels_)
    torch.save(results, out)
    """
    )
    + WORKER_EXIT
)


def run_world(tmp_path, world, mode="fit"):
    return run_workers(tmp_path, WORKER, world, mode)


@pytest.mark.parametrize("world", [2, 3])
def test_shards_give_the_single_process_result(tmp_path, world):
    ranks = run_world(tmp_path, world)
    X, _ = make_blobs(1000, 4, centers=7, cluster_std=1.5, random_state=0)
    w = np.random.RandomState(1).uniform(0.5, 2.0, size=len(X))
    for key, (centers, inertia, n_iter, _) in ranks[0].items():
        init, algorithm = key
        if init == "batches":
            for other in ranks[1:]:
                assert torch.equal(other[key][0], centers), key
                assert other[key][1] == inertia and other[key][2] == n_iter
            continue
        single = KMeans(7, init=init, algorithm=algorithm, batch_size=10**6, random_state=3).fit(
            torch.tensor(X), sample_weight=torch.tensor(w)
        )
        for other in ranks[1:]:
            assert torch.equal(other[key][0], centers), key  # every process holds the same centres
        torch.testing.assert_close(centers, single.cluster_centers_, rtol=1e-9, atol=1e-9)
        assert inertia == pytest.approx(single.inertia_, rel=1e-9)
        assert n_iter == single.n_iter_
        labels = torch.cat([r[key][3] for r in ranks])
        assert torch.equal(labels, single.labels_), key


def test_a_peer_that_does_not_join_raises_within_the_timeout(tmp_path):
    ranks = run_world(tmp_path, 2, mode="hang")
    assert ranks[0]["raised"] is not None and "waited more than 2 s" in ranks[0]["raised"]
    assert ranks[0]["seconds"] < 7
