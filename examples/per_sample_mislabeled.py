"""Per-sample gradient norms find mislabeled examples.

A small synthetic dataset (three Gaussian blobs in 8 dimensions, 600 points) has 30 of its
labels flipped to another class. A small MLP trained for 50 full-batch Adam steps
fits the clean points; the flipped ones keep a large loss, and so a large gradient of
their own loss. ``gw.per_sample.norms`` gives every sample's gradient norm in one
forward and one backward pass; the 30 largest are (nearly all) the flipped labels.

Run from the repository root::

    python examples/per_sample_mislabeled.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import gradwise.per_sample

N, DIM, CLASSES, FLIPPED, STEPS = 600, 8, 3, 30, 50


def make_data(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = 3.0 * torch.randn(CLASSES, DIM, generator=g)
    clean = torch.randint(0, CLASSES, (N,), generator=g)
    x = centers[clean] + torch.randn(N, DIM, generator=g)
    flipped = torch.randperm(N, generator=g)[:FLIPPED]
    noisy = clean.clone()
    noisy[flipped] = (clean[flipped] + torch.randint(1, CLASSES, (FLIPPED,), generator=g)) % CLASSES
    return {"x": x, "clean": clean, "noisy": noisy, "flipped": flipped}


def find_mislabeled(seed: int = 0, steps: int = STEPS) -> dict:
    data = make_data(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(DIM, 32), nn.ReLU(), nn.Linear(32, CLASSES))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(data["x"]), data["noisy"]).backward()
        opt.step()
    norms = gradwise.per_sample.norms(model, F.cross_entropy, data["x"], data["noisy"])
    suspects = norms.topk(FLIPPED).indices
    found = len(set(suspects.tolist()) & set(data["flipped"].tolist()))
    return {"model": model, "data": data, "norms": norms, "suspects": suspects, "found": found}


def main() -> None:
    result = find_mislabeled()
    norms, flipped = result["norms"], result["data"]["flipped"]
    is_flipped = torch.zeros(N, dtype=torch.bool)
    is_flipped[flipped] = True
    print(f"{N} samples, {FLIPPED} labels flipped; per-sample gradient norms after {STEPS} steps:")
    print(f"  median norm, clean labels:   {norms[~is_flipped].median():.4f}")
    print(f"  median norm, flipped labels: {norms[is_flipped].median():.4f}")
    print(f"The {FLIPPED} largest norms hold {result['found']} of the {FLIPPED} flipped labels.")


if __name__ == "__main__":
    main()
