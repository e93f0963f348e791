"""The bundled example ``examples/per_sample_mislabeled.py``."""

import pytest
import torch
import torch.nn.functional as F

from tests.examples import load_example, run_example


@pytest.fixture(scope="module")
def example():
    return load_example("per_sample_mislabeled")


@pytest.fixture(scope="module")
def result(example):
    return example.find_mislabeled(seed=0)


def test_data_has_the_stated_number_of_flipped_labels(example):
    data = example.make_data(0)
    assert (data["clean"] != data["noisy"]).sum().item() == example.FLIPPED
    assert set(torch.nonzero(data["clean"] != data["noisy"]).flatten().tolist()) == set(data["flipped"].tolist())


def test_norms_are_those_of_a_loop_and_find_the_flipped_labels(example, result):
    model, data = result["model"], result["data"]
    x, y = data["x"].double(), data["noisy"]
    model = model.double()
    params = list(model.parameters())
    reference = []
    for i in range(0, x.shape[0], 7):  # every 7th sample, float64, ordinary autograd
        gs = torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), params)
        reference.append(torch.cat([g.flatten() for g in gs]).norm())
    torch.testing.assert_close(result["norms"][::7].double(), torch.stack(reference), rtol=1e-4, atol=1e-6)
    # recounted independently of the example's own count
    top = torch.argsort(result["norms"], descending=True)[: example.FLIPPED].tolist()
    found = sum(i in set(data["flipped"].tolist()) for i in top)
    assert found == result["found"]
    assert found >= 0.8 * example.FLIPPED  # chance would find about 30 * 30 / 600 = 1.5


def test_script_runs_and_prints_the_summary():
    proc = run_example("per_sample_mislabeled")
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("The 30 largest norms hold"))
    assert int(line.split()[5]) >= 24
