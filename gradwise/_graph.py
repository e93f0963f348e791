"""Walks of the autograd graph, shared by the doctor and ``gradwise.testing``, and the
tensors among an operation's arguments (``tensors_in``, shared by the doctor and the
loss-form tracking of ``gradwise._losses``).

A graph is entered from the ``grad_fn`` of some tensors and followed through
``next_functions``; a leaf that accumulates gradient appears as an ``AccumulateGrad``
node whose ``variable`` is the leaf tensor.

Example:
    >>> w = torch.randn(3, requires_grad=True)
    >>> leaves = reachable_leaves([(w * 2).sum()])
    >>> [t is w for t in leaves]
    [True]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

__all__ = ["custom_function_nodes", "nodes", "reachable_leaves", "tensors_in", "unwrap_module"]


def nodes(roots: Iterable[torch.Tensor]) -> Iterator[Any]:
    """Every autograd node reachable from the ``grad_fn`` of ``roots``, each once (depth first)."""
    seen: set[Any] = set()
    stack = [r.grad_fn for r in roots if r.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        yield node
        stack.extend(n for n, _ in node.next_functions)


def reachable_leaves(roots: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """The leaf tensors a ``backward()`` from ``roots`` would accumulate gradient into.

    A root that is itself a leaf requiring grad counts (``w.backward(...)`` reaches ``w``).
    """
    roots = list(roots)
    found = [r for r in roots if r.requires_grad and r.grad_fn is None]
    for node in nodes(roots):
        variable = getattr(node, "variable", None)
        if isinstance(variable, torch.Tensor):
            found.append(variable)
    return found


def custom_function_nodes(roots: Iterable[torch.Tensor]) -> list[Any]:
    """The nodes of custom ``torch.autograd.Function`` s reachable from ``roots``, in discovery order."""
    return [node for node in nodes(roots) if hasattr(node, "_forward_cls")]


def tensors_in(values) -> list[torch.Tensor]:
    """The tensors among ``values`` and inside the lists, tuples and dicts among them (one level)."""
    out = []
    for v in values:
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, list | tuple):
            out.extend(x for x in v if isinstance(x, torch.Tensor))
        elif isinstance(v, dict):
            out.extend(x for x in v.values() if isinstance(x, torch.Tensor))
    return out


def unwrap_module(module: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside torch.compile and DDP / DataParallel wrappers."""
    while True:
        inner = getattr(module, "_orig_mod", None)
        if isinstance(inner, torch.nn.Module):
            module = inner
        elif isinstance(module, torch.nn.parallel.DistributedDataParallel | torch.nn.DataParallel):
            module = module.module
        else:
            return module
