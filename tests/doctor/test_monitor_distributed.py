"""monitor() in 2 gloo processes: under DDP every rank records the norms of the averaged gradients
(checked against the ranks' local gradients all-reduced by hand), only rank 0 writes the log, and a
NaN born on rank 1 is reported on both ranks as rank 1's; under FSDP2 the norms are the unsharded ones."""

import math
import textwrap

import pytest

from gradwise.doctor import read_jsonl
from tests.gloo import WORKER_EXIT, run_workers

STEPS = 4
NAN_STEP = 3

WORKER = (
    textwrap.dedent(
        """
    import copy, os, sys, warnings, torch, torch.distributed as dist
    from torch import nn
    import gradwise as gw

    rank, world, port, out, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    STEPS, NAN_STEP = int(sys.argv[6]), int(sys.argv[7])
    here = os.path.dirname(out)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)  # the same initial weights on every rank
    inner = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    results = {"names": [n for n, _ in inner.named_parameters()], "steps": []}

    def batch(step):  # a different batch on each rank and step
        g = torch.Generator().manual_seed(100 * rank + step)
        return torch.randn(6, 3, generator=g), torch.randn(6, 2, generator=g)

    if mode == "fsdp":
        try:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh("cpu", (world,))
            for layer in (inner[0], inner[2]):
                fully_shard(layer, mesh=mesh)
            model = fully_shard(inner, mesh=mesh)
            x, y = batch(0)
            nn.functional.mse_loss(model(x), y).backward()  # the probe: one step without the monitor
            model.zero_grad(set_to_none=True)
        except Exception as exc:
            results = {"skipped": f"FSDP2 on CPU with gloo: {type(exc).__name__}: {exc}"}
            torch.save(results, out)
            dist.barrier()
            os._exit(0)
        ref = None
    else:
        ref = copy.deepcopy(inner)  # a plain copy: the ranks' local gradients, averaged by hand
        model = nn.parallel.DistributedDataParallel(inner)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    params = dict(inner.named_parameters())
    log = os.path.join(here, f"log{rank}.jsonl")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with gw.doctor.monitor(model, opt, jsonl=log) as mon:
            for step in range(1, STEPS + 1):
                x, y = batch(step)
                opt.zero_grad(set_to_none=True)
                loss = nn.functional.mse_loss(model(x), y)
                if mode == "nan" and rank == 1 and step == NAN_STEP:
                    loss = loss * float("nan")
                loss.backward()
                seen = {"loss": float(loss)}
                if mode == "fsdp":
                    seen["grad_norm"] = {n: float(p.grad.full_tensor().double().norm()) for n, p in params.items()}
                else:
                    seen["grad_norm"] = {n: float(p.grad.double().norm()) for n, p in params.items()}
                    ref.load_state_dict(inner.state_dict())
                    local = torch.autograd.grad(nn.functional.mse_loss(ref(x), y), list(ref.parameters()))
                    seen["averaged_norm"], seen["local_norm"] = {}, {}
                    for (n, _), g in zip(ref.named_parameters(), local):
                        g = g.detach().double().clone()
                        seen["local_norm"][n] = float(g.norm())
                        dist.all_reduce(g)
                        seen["averaged_norm"][n] = float((g / world).norm())
                if mode != "fsdp":
                    before = {n: p.detach().double().clone() for n, p in params.items()}
                opt.step()
                if mode != "fsdp":
                    seen["update_ratio"] = {
                        n: float((p.detach().double() - before[n]).norm() / before[n].norm()) for n, p in params.items()
                    }
                results["steps"].append(seen)
    results["history"] = mon.history
    results["findings"] = [f.to_dict() for f in mon.findings]
    results["internal_errors"] = mon.internal_errors
    results["warnings"] = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if "gradwise" in w.filename]
    results["log"] = log
    torch.save(results, out)
    """
    )
    + WORKER_EXIT
)


def run(tmp_path, mode):
    return run_workers(tmp_path, WORKER, 2, mode, str(STEPS), str(NAN_STEP), timeout=120)


def close(a, b, rel=1e-5):
    return a is not None and b is not None and math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)


def test_ddp_records_the_synchronised_gradients_and_only_rank_0_writes_the_log(tmp_path):
    ranks = run(tmp_path, "ddp")
    problems = []
    for rank, r in enumerate(ranks):
        assert r["internal_errors"] == [], r["internal_errors"]
        assert r["warnings"] == [], r["warnings"]
        assert r["findings"] == [], r["findings"]
        assert [h["step"] for h in r["history"]] == list(range(1, STEPS + 1))
        for h, seen in zip(r["history"], r["steps"], strict=True):
            step = h["step"]
            if h.get("rank") != rank:
                problems.append(f"rank {rank} step {step}: record rank {h.get('rank')!r}")
            if list(h["params"]) != r["names"]:  # the inner module's names, no "module." prefix
                problems.append(f"rank {rank} step {step}: names {list(h['params'])} != {r['names']}")
                continue
            if not close(h["loss"], seen["loss"]):  # the rank's own loss
                problems.append(f"rank {rank} step {step}: loss {h['loss']} != {seen['loss']}")
            total = math.sqrt(sum(v * v for v in seen["grad_norm"].values()))
            if not close(h["grad_norm_total"], total):
                problems.append(f"rank {rank} step {step}: grad_norm_total {h['grad_norm_total']} != {total}")
            for name, v in h["params"].items():
                for key, want in (
                    ("grad_norm", seen["grad_norm"][name]),
                    ("grad_norm", seen["averaged_norm"][name]),  # the mean of the ranks' local gradients
                    ("update_ratio", seen["update_ratio"][name]),
                ):
                    if not close(v[key], want):
                        problems.append(f"rank {rank} step {step} {name}: {key} {v[key]} != {want}")
                if v["nonfinite"] != 0:
                    problems.append(f"rank {rank} step {step} {name}: nonfinite {v['nonfinite']}")
    for h0, h1 in zip(ranks[0]["history"], ranks[1]["history"], strict=True):
        for name in h0["params"]:  # averaged gradients: the same figures on both ranks
            for key in ("grad_norm", "param_norm", "update_ratio"):
                if not close(h0["params"][name][key], h1["params"][name][key], rel=1e-6):
                    problems.append(f"step {h0['step']} {name}: {key} differs between ranks")
        assert h0["loss"] != h1["loss"]  # the batches differed, so the test above could fail:
    for r in ranks:  # a monitor reading the local gradients would not match
        assert any(
            not close(seen["local_norm"][n], seen["averaged_norm"][n], rel=1e-2)
            for seen in r["steps"]
            for n in r["names"]
        )
    assert not problems, "\n".join(problems)
    assert not (tmp_path / "log1.jsonl").exists()
    assert read_jsonl(tmp_path / "log0.jsonl") == ranks[0]["history"]


def test_a_nan_on_rank_1_is_reported_on_every_rank_as_rank_1s(tmp_path):
    ranks = run(tmp_path, "nan")
    for rank, r in enumerate(ranks):
        assert r["internal_errors"] == [], (rank, r["internal_errors"])
        assert r["warnings"] == [], (rank, r["warnings"])
        nonfinite = [f for f in r["findings"] if f["kind"] == "non-finite"]
        assert len(nonfinite) == 1, (rank, r["findings"])
        f = nonfinite[0]
        assert f["step"] == NAN_STEP, (rank, f)
        assert f["data"]["rank"] == 1, (rank, f)
        assert "rank 1" in f["message"], (rank, f["message"])
        assert math.isnan(r["history"][NAN_STEP - 1]["grad_norm_total"]), rank
        assert all(math.isfinite(h["grad_norm_total"]) for h in r["history"][: NAN_STEP - 1]), rank
    assert math.isfinite(ranks[0]["history"][NAN_STEP - 1]["loss"])  # rank 0's own loss was finite
    assert math.isnan(ranks[1]["history"][NAN_STEP - 1]["loss"])


def test_fsdp2_records_the_unsharded_gradient_norms(tmp_path):
    ranks = run(tmp_path, "fsdp")
    if "skipped" in ranks[0]:
        pytest.skip(ranks[0]["skipped"])
    problems = []
    for rank, r in enumerate(ranks):
        problems += [f"rank {rank}: internal error {e}" for e in r["internal_errors"]]
        if [h["step"] for h in r["history"]] != list(range(1, STEPS + 1)):
            problems.append(f"rank {rank}: recorded steps {[h['step'] for h in r['history']]}")
        for h, seen in zip(r["history"], r["steps"], strict=False):
            if list(h["params"]) != r["names"]:
                problems.append(f"rank {rank} step {h['step']}: names {list(h['params'])} != {r['names']}")
            for name, want in seen["grad_norm"].items():
                got = h["params"].get(name, {}).get("grad_norm")
                if not close(got, want):
                    problems.append(f"rank {rank} step {h['step']} {name}: grad_norm {got} != unsharded {want}")
    assert not problems, "\n".join(problems)
