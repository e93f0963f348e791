"""Under torch.compile and DDP (two gloo processes)."""

import textwrap
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import gradwise.per_sample as ps
from tests.gloo import WORKER_EXIT, run_workers


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4))


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 4, (8,), generator=g)


def _loop_norms(model, x, y):
    out = []
    for i in range(x.shape[0]):
        gs = torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), list(model.parameters()))
        out.append(torch.cat([g.flatten() for g in gs]).norm())
    return torch.stack(out)


def test_compiled_model_and_compiled_caller():
    model = _model()
    x, y = _data()
    expected = _loop_norms(model, x, y)
    compiled = torch.compile(model)
    torch.testing.assert_close(ps.norms(compiled, F.cross_entropy, x, y), expected, rtol=1e-5, atol=1e-6)
    fn = torch.compile(lambda x, y: ps.norms(model, F.cross_entropy, x, y))
    torch.testing.assert_close(fn(x, y), expected, rtol=1e-5, atol=1e-6)


WORKER = (
    textwrap.dedent(
        """
    import os, sys, torch, torch.distributed as dist, torch.nn.functional as F
    from torch import nn
    sys.path.insert(0, sys.argv[5])
    import gradwise.per_sample as ps
    from tests.per_sample.test_compile_ddp import _data, _model

    rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    ddp = nn.parallel.DistributedDataParallel(_model())
    x, y = _data()
    shard = slice(rank * 4, rank * 4 + 4)
    norms = ps.norms(ddp, F.cross_entropy, x[shard], y[shard])
    ps.clip_and_accumulate(ddp, F.cross_entropy, x[shard], y[shard], max_norm=0.5)
    torch.save({"norms": norms, "grads": [p.grad for p in ddp.parameters()]}, out)
    """
    )
    + WORKER_EXIT
)


def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    ranks = run_workers(tmp_path, WORKER, 2, str(Path(__file__).resolve().parents[2]))
    model = _model()
    x, y = _data()
    one = ps.norms(model, F.cross_entropy, x, y)
    torch.testing.assert_close(torch.cat([r["norms"] for r in ranks]), one, rtol=1e-5, atol=1e-6)
    ps.clip_and_accumulate(model, F.cross_entropy, x, y, max_norm=0.5)
    for r in ranks:  # every rank holds the clipped sum over the global batch
        for got, expected in zip(r["grads"], model.parameters(), strict=True):
            torch.testing.assert_close(got, expected.grad, rtol=1e-5, atol=1e-6)
