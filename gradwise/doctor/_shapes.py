"""Shape errors explained: which exceptions are shape errors, and what each one means, in
the user's names and figures.

PyTorch's message for a shape error names the sizes it compared, in its own terms
("mat1 and mat2 shapes cannot be multiplied (64x320 and 500x50)"). :func:`explain` turns a
:class:`Failure` (the failing call as written in the user's source, each operand's name,
shape and origin, the layer it ran in) into a message that says which of the user's
tensors has the wrong size, by how much, and the fix: the feature count a flattening
gives, the ``nn.Linear`` to change, the dimension ``torch.cat`` could join along. The
message is parsed with one pattern per op family (view/reshape, matrix products and
linear layers, cat/stack, losses, convolutions, normalisation layers, recurrent layers,
attention, broadcasting, dimension indices); a message that none matches still gets the
shapes of every operand. Nothing here touches a tensor: a :class:`Failure` holds shapes
and text only.

Example:
    >>> f = Failure("view", "x.view(-1, 500)", "line 41", (Operand("x", (64, 20, 4, 4)),),
    ...             message="shape '[-1, 500]' is invalid for input of size 20480")
    >>> explain(f).message
    'x.view(-1, 500) at line 41: x is (64, 20, 4, 4); 20*4*4 = 320 features per sample, the view asks for 500.'
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gradwise._losses import LOSS_MODULES

__all__ = [
    "LOSSES",
    "Explanation",
    "Failure",
    "Layer",
    "Operand",
    "explain",
    "fmt",
    "generic",
    "is_loss",
    "is_shape_error",
]

_SHAPE_WORDS = re.compile(
    r"(?<![A-Za-z])(shapes?|sizes?|dimensions?|dim|channels?)(?![A-Za-z])|\b\d+D\b|should contain \d+ elements",
    re.IGNORECASE,
)
_NOT_SHAPE = re.compile(
    r"dtype|scalar type|device|memory|satisfy the constraint|requires_grad|grad_fn|inplace operation|second time",
    re.IGNORECASE,
)
_SIZE_ARGUMENT = re.compile(r"argument '(size|shape)'")
_SHAPE_TYPES = (RuntimeError, ValueError, IndexError, AssertionError)

LOSSES = frozenset(LOSS_MODULES.values())
"""Loss functions by their functional names (any other ``*_loss`` op counts too)."""

_VIEWS = frozenset({"view", "reshape", "view_as", "reshape_as", "unflatten", "flatten", "expand", "expand_as"})
_MATMULS = frozenset(
    {"matmul", "__matmul__", "__rmatmul__", "mm", "spmm", "bmm", "addmm", "baddbmm", "addbmm", "mv", "dot"}
    | {"linear", "bilinear", "tensordot", "inner", "outer", "scaled_dot_product_attention"}
)
_JOINS = frozenset({"cat", "concat", "concatenate", "stack", "hstack", "vstack", "dstack", "column_stack"})
_MATRIX_OPERANDS = {"addmm": (1, 2), "baddbmm": (1, 2), "addbmm": (1, 2)}


def is_loss(op: str) -> bool:
    return op in LOSSES or op.endswith("_loss")


def is_shape_error(error: BaseException) -> bool:
    """Whether ``error`` is a shape error: a RuntimeError, ValueError, IndexError or
    AssertionError whose message is about sizes, shapes or dimensions (not dtypes or
    devices), or a TypeError about a ``size``/``shape`` argument (``x.view(n / 2)``)."""
    text = str(error)
    if isinstance(error, TypeError):
        return bool(_SIZE_ARGUMENT.search(text))
    if not isinstance(error, _SHAPE_TYPES) or _NOT_SHAPE.search(text):
        return False
    return bool(_SHAPE_WORDS.search(text))


@dataclass(frozen=True)
class Operand:
    """A tensor operand of the failing call.

    Attributes:
        name: how the user's source writes it (``x``, ``self.fc1(x)``'s input).
        shape: its shape.
        origin: where it came from, as a clause ("made by conv2 (nn.Conv2d(10, 20, 5), line
            30) giving (64, 20, 8, 8), then max_pool2d at line 40"), or "".
        contiguous: whether it is contiguous (a view needs it).
    """

    name: str
    shape: tuple[int, ...]
    origin: str = ""
    contiguous: bool = True

    def describe(self) -> str:
        return f"{self.name} is {fmt(self.shape)}" + (f", {self.origin}" if self.origin else "")


@dataclass(frozen=True)
class Layer:
    """A module: its name in the model (``fc1``, ``classifier.3``), class, how it was
    constructed (``nn.Linear(500, 50)``), where (``line 22``), and its size attributes
    (``in_features``, ``in_channels``, ``input_size``, ...)."""

    name: str
    cls: str
    ctor: str
    made: str = ""
    attrs: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.name} = {self.ctor}" + (f" ({self.made})" if self.made else "")


@dataclass(frozen=True)
class Failure:
    """A failing call, in the user's terms.

    Attributes:
        op: the op's short name (``view``, ``linear``, ``cross_entropy``), or a module
            class's name when a module's own check raised (``LSTM``).
        call: the call as written at the failing line (``x.view(-1, 500)``, ``self.fc1(x)``).
        where: the failing line, as the message says it (``line 41``).
        operands: the tensor operands (the layer's own parameters left out).
        layer: the layer the op ran in, if any.
        message: PyTorch's message.
        options: the op's non-tensor arguments that matter (``dim`` of a cat).
        linears: the model's ``nn.Linear`` layers (a flattening fix names the one to change).
    """

    op: str
    call: str
    where: str
    operands: tuple[Operand, ...]
    layer: Layer | None = None
    message: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    linears: tuple[Layer, ...] = ()


@dataclass(frozen=True)
class Explanation:
    message: str
    fix: str
    data: dict


def fmt(shape: Sequence[int]) -> str:
    """``(64, 20, 4, 4)``, ``(32,)``, ``()``."""
    shape = tuple(shape)
    return f"({shape[0]},)" if len(shape) == 1 else "(" + ", ".join(map(str, shape)) + ")"


def _ints(text: str) -> list[int]:
    return [int(s) for s in re.findall(r"-?\d+", text)]


def _product(sizes: Sequence[int]) -> str:
    """``20*4*4 = 320`` (or just ``320`` for one size)."""
    total = math.prod(sizes)
    return f"{'*'.join(map(str, sizes))} = {total}" if len(sizes) > 1 else str(total)


def explain(f: Failure) -> Explanation:
    """The message, fix and figures for a failure (a generic account of the shapes where
    the message is not one of the known ones)."""
    op, text = f.op, f.message
    for family, applies in _FAMILIES:
        if applies(op, text):
            found = family(f)
            if found is not None:
                return found
    return generic(f)


# --- the families ---------------------------------------------------------------------------


def _head(f: Failure, *operands: Operand) -> str:
    shown = operands or f.operands
    return f"{f.call} at {f.where}: " + "; ".join(o.describe() for o in shown)


def _data(f: Failure, subkind: str, expected: Any = None, actual: Any = None, **more: Any) -> dict:
    shapes: dict[str, list[int]] = {}
    for o in f.operands:
        name, n = o.name, 2
        while name in shapes:
            name, n = f"{o.name}#{n}", n + 1
        shapes[name] = list(o.shape)
    out = {"subkind": subkind, "op": f.op, "shapes": shapes, "expected": expected, "actual": actual}
    if f.layer is not None:
        out["layer"] = f.layer.name
    out.update(more)
    return out


def _view(f: Failure) -> Explanation | None:
    if not f.operands:
        return _view_of_unknown(f)
    x, text, op = f.operands[0], f.message, f.op
    verb = "view" if op in ("view", "view_as") else op
    if "size and stride" in text:
        return Explanation(
            f"{_head(f, x)}; it is not contiguous (a transpose or permute reorders its memory), so {verb} cannot "
            "merge its dimensions without a copy.",
            f"{x.name}.reshape(...) instead of .view(...), or {x.name}.contiguous().view(...).",
            _data(f, "view-stride", actual=list(x.shape)),
        )
    m = re.search(r"shape '\[([-\d, ]*)\]' is invalid for input of size (\d+)", text)
    if m is None:
        m2 = re.search(r"Provided sizes \[([-\d, ]*)\] don't multiply up to the size of dim (-?\d+) \((\d+)\)", text)
        if m2 is not None:
            asked, dim, size = _ints(m2.group(1)), int(m2.group(2)), int(m2.group(3))
            return Explanation(
                f"{_head(f, x)}; dim {dim} holds {size}, and the sizes asked for, {fmt(asked)}, do not multiply up to "
                f"{size}.",
                f"Unflatten dim {dim} into sizes whose product is {size} (use -1 for one of them).",
                _data(f, "unflatten", expected=size, actual=asked),
            )
        return None
    asked, numel = _ints(m.group(1)), int(m.group(2))
    shape = x.shape
    features = math.prod(shape[1:]) if len(shape) >= 2 else None
    if len(asked) == 2 and asked[0] == -1 and asked[1] > 0 and features is not None:
        want = asked[1]
        fix = f"{x.name}.{verb}({x.name}.size(0), -1) or {x.name}.flatten(1)"
        layer = next((layer for layer in f.linears if layer.attrs.get("in_features") == want), None)
        if layer is not None:
            out = layer.attrs.get("out_features")
            fix += f", and {layer.name} = nn.Linear({features}, {out})" + (f" ({layer.made})" if layer.made else "")
        else:
            fix += f", and {features} input features in the next layer"
        return Explanation(
            f"{_head(f, x)}; {_product(shape[1:])} features per sample, the {verb} asks for {want}.",
            fix + ".",
            _data(f, "flatten-features", expected=want, actual=features, numel=numel, asked=asked),
        )
    if len(asked) > 2 and asked[0] == -1 and -1 not in asked[1:] and features is not None:
        want = math.prod(asked[1:])
        fix = f"Make the sizes after -1 multiply to {features}"
        channels = asked[1]
        side = math.isqrt(features // channels) if channels > 0 and features % channels == 0 else 0
        if len(asked) == 4 and side * side * channels == features:
            fix = f"{x.name}.{verb}(-1, {channels}, {side}, {side}): {features} = {channels}*{side}*{side} per sample"
        else:
            fix += ", or change the layer that makes them"
        return Explanation(
            f"{_head(f, x)}; {features} features per sample, the {verb} asks for {_product(asked[1:])} per sample.",
            fix + ".",
            _data(f, "unflatten-features", expected=want, actual=features, numel=numel, asked=asked),
        )
    shown = f"{_product(shape)} elements" if len(shape) > 1 else f"{numel} elements"
    if -1 in asked:
        known = [a for a in asked if a != -1]
        reason = f"{x.name} holds {shown}, which {_product(known)} does not divide"
    else:
        reason = f"{x.name} holds {shown}, the shape asked for holds {_product(asked)}"
    fix = "Derive the sizes from the tensor (x.size(0), -1) instead of writing them as numbers."
    batch = asked[0] if asked and asked[0] > 0 and shape else None
    if batch is not None and shape[0] != batch and (-1 in asked or math.prod(asked[1:]) == math.prod(shape[1:])):
        reason += (
            f"; the {verb} fixes the first dim at {batch} but {x.name} has {shape[0]} rows (a last, smaller batch?)"
        )
        rest = ", ".join(map(str, asked[1:]))
        fix = f"{x.name}.{verb}({x.name}.size(0), {rest}): the batch size from the tensor, not the constant {batch}."
    return Explanation(
        f"{_head(f, x)}; {reason}.", fix, _data(f, "view-size", expected=asked, actual=list(shape), numel=numel)
    )


def _view_of_unknown(f: Failure) -> Explanation | None:
    """A view whose tensor is not known (an expression the doctor does not evaluate): the
    figures of the message alone."""
    m = re.search(r"shape '\[([-\d, ]*)\]' is invalid for input of size (\d+)", f.message)
    if m is None:
        return None
    asked, numel = _ints(m.group(1)), int(m.group(2))
    rest = math.prod(a for a in asked[1:] if a != -1) if len(asked) > 1 else 0
    why = f"the tensor holds {numel} elements, which the shape {fmt(asked)} cannot hold"
    fix = "Derive the sizes from the tensor (x.size(0), -1) instead of writing them as numbers."
    if asked and asked[0] > 0 and rest and numel % rest == 0 and numel // rest != asked[0]:
        rows = numel // rest
        why = f"the tensor holds {numel} elements, {rows} rows of {rest}, but the {f.op} fixes the first dim at "
        why += str(asked[0])
        why += " (a last, smaller batch?)"
        fix = f"Take the batch size from the tensor (x.size(0)) instead of the constant {asked[0]}."
    return Explanation(
        f"{f.call} at {f.where}: {why}.", fix, _data(f, "view-size", expected=asked, actual=None, numel=numel)
    )


def _expand(f: Failure) -> Explanation | None:
    m = re.search(
        r"expanded size of the tensor \((-?\d+)\) must match the existing size \((\d+)\) at non-singleton "
        r"dimension (\d+)\.\s+Target sizes: \[([-\d, ]*)\]\.\s+Tensor sizes: \[([\d, ]*)\]",
        f.message,
    )
    if m is None:
        return None
    want, has, dim = int(m.group(1)), int(m.group(2)), int(m.group(3))
    target, sizes = _ints(m.group(4)), _ints(m.group(5))
    shown = f.operands[0].describe() if f.operands else f"the tensor is {fmt(sizes)}"
    if f.op == "__setitem__" and len(f.operands) > 1:
        shown = "; ".join(o.describe() for o in f.operands[:2])
    return Explanation(
        f"{f.call} at {f.where}: {shown}; only dimensions of size 1 can be expanded (broadcast), and dim {dim} "
        f"is {has}, the target {fmt(target)} asks for {want}.",
        f"Give dim {dim} the size {has} in the target (or -1 to keep it), or expand a tensor whose dim {dim} is 1.",
        _data(f, "expand", expected=want, actual=has, dim=dim),
    )


def _einsum(f: Failure) -> Explanation | None:
    m = re.search(
        r"subscript (\w) has size (\d+) for operand (\d+) which does not broadcast with previously seen size (\d+)",
        f.message,
    )
    if m is None:
        return None
    letter, size, index, seen = m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))
    where = []
    equation = f.options.get("equation")
    inputs = equation.replace(" ", "").split("->")[0].split(",") if isinstance(equation, str) else []
    for i, (sub, o) in enumerate(zip(inputs, f.operands, strict=False)):
        if letter in sub and len(sub) == len(o.shape):
            where.append(f"dim {sub.index(letter)} of {o.name} ({o.shape[sub.index(letter)]})")
        elif i == index:
            where.append(f"{o.name} ({size})")
    said = " and ".join(where) if where else f"operand {index} ({size}) and an earlier one ({seen})"
    return Explanation(
        f"{_head(f)}; subscript {letter} stands for {said}: one letter must have one size.",
        f"Make the dimensions labelled {letter} equal ({seen} vs {size}), or label them differently.",
        _data(f, "einsum", expected=seen, actual=size, subscript=letter),
    )


def _linear(f: Failure) -> Explanation | None:
    m = re.search(r"shapes cannot be multiplied \((\d+)x(\d+) and (\d+)x(\d+)\)", f.message)
    if m is None or not f.operands:
        return None
    x, layer = f.operands[0], f.layer
    has = x.shape[-1] if x.shape else int(m.group(2))
    if layer is not None and "in_features" in layer.attrs:
        want, out = layer.attrs["in_features"], layer.attrs.get("out_features")
        fix = f"{layer.name} = nn.Linear({has}, {out})" + (f" at {layer.made}" if layer.made else "")
        fix += f" if {x.name} is right; else fix what makes {x.name}"
        if x.origin:
            fix += f" ({x.origin.removeprefix('made by ')})"
        return Explanation(
            f"{_head(f, x)}; but {layer.name} = {layer.ctor} expects {want} input features"
            + (f" (made at {layer.made})" if layer.made else "")
            + ".",
            fix + ".",
            _data(f, "linear", expected=want, actual=has),
        )
    want = int(m.group(3))
    weight = f.operands[1] if len(f.operands) > 1 else None
    return Explanation(
        f"{_head(f)}; the weight takes {want} input features, {x.name}'s last dimension has {has}.",
        f"Make the weight's second dimension {has} (or {x.name}'s last dimension {want})"
        + (f": {weight.name} is (out_features, in_features)." if weight else "."),
        _data(f, "linear", expected=want, actual=has),
    )


def _contracted(shape: tuple[int, ...]) -> tuple[int, str]:
    """The size and name of the dimension of the right operand that a matrix product contracts."""
    return (shape[-2], "dim -2") if len(shape) >= 2 else (shape[0], "dim 0")


def _matmul(f: Failure) -> Explanation | None:
    if f.op == "linear":
        return _linear(f)
    pick = _MATRIX_OPERANDS.get(f.op, (0, 1))
    if len(f.operands) <= max(pick):
        return None
    a, b = f.operands[pick[0]], f.operands[pick[1]]
    if not a.shape or not b.shape:
        return None
    text = f.message
    if f.op == "scaled_dot_product_attention":
        ka, kb = a.shape[-1], b.shape[-1]
        return Explanation(
            f"{_head(f, a, b)}; attention multiplies {a.name} by {b.name} transposed, so their last dimensions must "
            f"match: {ka} vs {kb}.",
            f"Give query and key the same head size (their last dimension): {ka} or {kb}.",
            _data(f, "matmul", expected=ka, actual=kb),
        )
    batch = re.search(r"batch2 tensor to be: \[(\d+), (\d+)\] but got: \[(\d+), (\d+)\]", text)
    if batch is not None and batch.group(1) != batch.group(3):
        na, nb = int(batch.group(1)), int(batch.group(3))
        return Explanation(
            f"{_head(f, a, b)}; their batch dimensions differ: {na} vs {nb}.",
            f"Both operands need the same batch size in dim 0; check where {b.name} comes from.",
            _data(f, "matmul-batch", expected=na, actual=nb),
        )
    broadcast = re.search(r"size of tensor a \((\d+)\) must match the size of tensor b \((\d+)\)", text)
    if broadcast is not None:
        fix = "Make the leading (batch) dimensions equal, or 1 in one of them."
        swapped = re.search(r"^(.*)\.transpose\((-?\d+), (-?\d+)\)$", b.name)
        if swapped and len(b.shape) > 2 and {int(swapped.group(2)), int(swapped.group(3))} != {-2, -1}:
            fix = (
                f"{swapped.group(1)}.transpose(-2, -1): transpose({swapped.group(2)}, {swapped.group(3)}) of a "
                f"{len(b.shape)}-D tensor swaps a batch dimension, not the two matrix dimensions."
            )
        return Explanation(
            f"{_head(f, a, b)}; their batch dimensions (all but the last two) do not broadcast: "
            f"{broadcast.group(1)} vs {broadcast.group(2)}.",
            fix,
            _data(f, "matmul-batch", expected=int(broadcast.group(1)), actual=int(broadcast.group(2))),
        )
    ka = a.shape[-1]
    kb, which = _contracted(b.shape)
    if f.op == "dot" or (len(a.shape) == 1 and len(b.shape) == 1):
        ka, kb, which = a.shape[0], b.shape[0], "dim 0"
    if ka == kb:
        return None
    where_b = f"{b.name}'s {which} ({kb})"
    fix = f"{b.name} needs {ka} in its {which}, or {a.name} {kb} in its last dimension."
    if len(b.shape) >= 2 and b.shape[-1] == ka:
        fix = f"{b.name}.transpose(-2, -1) (or {b.name}.T) fits: its last dimension is {ka}."
    elif len(a.shape) >= 2 and a.shape[-2] == kb:
        fix = f"{a.name}.transpose(-2, -1) (or {a.name}.T) fits: its dim -2 is {kb}."
    return Explanation(
        f"{_head(f, a, b)}; the product contracts {a.name}'s last dimension ({ka}) with {where_b}, which must be "
        "equal.",
        fix,
        _data(f, "matmul", expected=ka, actual=kb),
    )


def _join(f: Failure) -> Explanation | None:
    tensors = f.operands
    if len(tensors) < 2:
        return None
    text, op = f.message, f.op
    dims = {len(t.shape) for t in tensors}
    if "same number of dimensions" in text or len(dims) > 1:
        listed = ", ".join(f"{t.name} {len(t.shape)}-D {fmt(t.shape)}" for t in tensors)
        return Explanation(
            f"{f.call} at {f.where}: the tensors have different numbers of dimensions: {listed}.",
            "Give every tensor the same number of dimensions (unsqueeze the smaller ones) before joining.",
            _data(f, op, expected=len(tensors[0].shape), actual=[len(t.shape) for t in tensors]),
        )
    ndim = dims.pop()
    stack = op == "stack"
    said = re.search(r"except in dimension (-?\d+)", text)
    dim = int(said.group(1)) if said else f.options.get("dim", 0)
    if not isinstance(dim, int):
        dim = 0
    if not stack and ndim:
        dim %= ndim
    differ = [d for d in range(ndim) if (stack or d != dim) and len({t.shape[d] for t in tensors}) > 1]
    if not differ:
        return None
    first = tensors[0]
    odd = next(t for t in tensors if any(t.shape[d] != first.shape[d] for d in differ))
    d = differ[0]
    if stack:
        sizes = ", ".join(f"{t.name} {fmt(t.shape)}" for t in tensors)
        why = f"stack needs every tensor the same shape: {sizes}; dim {d} differs ({first.shape[d]} vs {odd.shape[d]})"
    else:
        outside = ", ".join(
            f"{t.name} " + "(" + ", ".join("*" if i == dim else str(s) for i, s in enumerate(t.shape)) + ")"
            for t in tensors
        )
        why = (
            f"outside the joined dim {dim} every size must agree: {outside}; dim {d} differs "
            f"({first.shape[d]} for {first.name}, {odd.shape[d]} for {odd.name})"
        )
    detail = "; ".join(t.describe() for t in tensors if t.origin)
    message = f"{f.call} at {f.where}: {why}." + (f" {detail}." if detail else "")
    if not stack and len(differ) == 1 and all(t.shape[dim] == first.shape[dim] for t in tensors):
        fix = f"Join along dim={d} if that was meant; else give {odd.name} {first.shape[d]} in dim {d}."
    else:
        fix = f"Give {odd.name} size {first.shape[d]} in dim {d} (check where it comes from), or join other tensors."
    return Explanation(
        message, fix, _data(f, op, expected=first.shape[d], actual=odd.shape[d], dim=dim, differing_dims=differ)
    )


def _loss(f: Failure) -> Explanation | None:
    if len(f.operands) < 2:
        return None
    inp, tgt = f.operands[0], f.operands[1]
    text, op = f.message, f.op
    head = _head(f, inp, tgt)
    batches = {"input_batch": inp.shape[0] if inp.shape else None, "target_batch": tgt.shape[0] if tgt.shape else None}
    m = re.search(r"input batch_size \((\d+)\) to match target batch_size \((\d+)\)", text)
    if m is not None:
        nb, tb = int(m.group(1)), int(m.group(2))
        why = f"{op} pairs each row of {inp.name} with one target: {nb} rows (batch {nb}) but {tb} targets (batch {tb})"
        if tgt.shape and math.prod(tgt.shape) == nb and len(tgt.shape) > 1:
            fix = f"Flatten the targets like the input: {tgt.name}.reshape(-1)."
        elif tb and nb % tb == 0:
            why += (
                f"; {inp.name} has {nb // tb}x as many rows, as when a view/reshape merges another dimension into "
                "the batch"
            )
            fix = (
                f"Keep the batch dimension when flattening ({inp.name} must have one row per sample): "
                "x.view(x.size(0), -1) or x.flatten(1), and the next layer's in_features to match."
            )
        else:
            fix = f"Give {inp.name} and {tgt.name} the same batch size ({inp.name} has {nb}, {tgt.name} {tb})."
        return Explanation(f"{head}; {why}.", fix, _data(f, "loss-batch", expected=nb, actual=tb, **batches))
    m = re.search(r"Expected target size \[([\d, ]*)\], got \[([\d, ]*)\]", text)
    if m is not None:
        expected, got = _ints(m.group(1)), _ints(m.group(2))
        why = (
            f"{op} reads the classes from dim 1 of {inp.name} ({inp.shape[1] if len(inp.shape) > 1 else '?'} classes), "
            f"so it expects the target {fmt(expected)}, got {fmt(got)}"
        )
        fix = f"Make the target {fmt(expected)}."
        if len(inp.shape) == 3 and tuple(got) == tuple(inp.shape[:2]):
            classes = inp.shape[2]
            fix = (
                f"For a sequence, put the classes last and flatten: {op}({inp.name}.reshape(-1, {classes}), "
                f"{tgt.name}.reshape(-1)), or {op}({inp.name}.transpose(1, 2), {tgt.name})."
            )
        return Explanation(f"{head}; {why}.", fix, _data(f, "loss-target", expected=expected, actual=got, **batches))
    m = re.search(r"size mismatch \(got input: \[([\d, ]*)\] ?, target: \[([\d, ]*)\]", text)
    if m is not None:
        i, t = _ints(m.group(1)), _ints(m.group(2))
        return Explanation(
            f"{head}; for (N, C, d1, ...) scores the target must be (N, d1, ...): {fmt([i[0], *i[2:]])}, got {fmt(t)}.",
            f"Resize the scores or the target so their batch and spatial sizes agree (e.g. F.interpolate({inp.name}, "
            f"size={fmt(t[1:])})).",
            _data(f, "loss-target", expected=[i[0], *i[2:]], actual=t, **batches),
        )
    m = re.search(r"Target size \(torch\.Size\(\[([\d, ]*)\]\)\) must be the same as input size", text) or re.search(
        r"Using a target size \(torch\.Size\(\[([\d, ]*)\]\)\) that is different to the input size", text
    )
    if m is not None or ("target" in text.lower() and "same" in text.lower() and "size" in text.lower()):
        fix = f"Give {inp.name} and {tgt.name} the same shape."
        if tuple(inp.shape) == (*tgt.shape, 1):
            fix = f"{inp.name}.squeeze(-1) (or {tgt.name}.unsqueeze(-1)): one score per target."
            if _without_unsqueeze(inp.name) != inp.name:
                fix = f"{_without_unsqueeze(inp.name)}, without the .unsqueeze: one score per target."
        elif tuple(tgt.shape) == (*inp.shape, 1):
            fix = f"{tgt.name}.squeeze(-1) (or {inp.name}.unsqueeze(-1))."
            if _without_unsqueeze(tgt.name) != tgt.name:
                fix = f"{_without_unsqueeze(tgt.name)}, without the .unsqueeze: one target per score."
        return Explanation(
            f"{head}; {op} compares them element by element, so they must have the same shape.",
            fix,
            _data(f, "loss-shape", expected=list(inp.shape), actual=list(tgt.shape), **batches),
        )
    if "target tensor expected" in text:
        fix = f"Class-index targets are one per row of {inp.name}: {fmt(inp.shape[:1] + inp.shape[2:])}."
        if len(tgt.shape) == 2 and tgt.shape[1] == 1:
            base = _without_unsqueeze(tgt.name)
            fix = (
                f"{base}, without the .unsqueeze: one class index per row."
                if base != tgt.name
                else f"{tgt.name}.squeeze(1) (or {tgt.name}.view(-1)): one class index per row."
            )
        elif len(tgt.shape) == 2 and len(inp.shape) == 2 and tgt.shape[0] == inp.shape[0]:
            fix = f"{tgt.name}.argmax(1) for one-hot targets (class probabilities must be float and {fmt(inp.shape)})."
        return Explanation(
            f"{head}; {op} takes one class index per sample, but {tgt.name} has {len(tgt.shape)} dimensions.",
            fix,
            _data(f, "loss-target", expected=list(inp.shape[:1]), actual=list(tgt.shape), **batches),
        )
    broadcast = _broadcast(f, inp, tgt)
    if broadcast is not None:
        return Explanation(
            broadcast.message,
            f"Give {tgt.name} the shape of {inp.name}, {fmt(inp.shape)}: {op} compares them element by element.",
            {**broadcast.data, "subkind": "loss-shape", **batches},
        )
    return None


def _without_unsqueeze(name: str) -> str:
    """``y.unsqueeze(1)`` -> ``y`` (a name that adds the dimension the loss objects to)."""
    m = re.match(r"^(.*)\.(unsqueeze\((-?\d+)\)|view\(-1, 1\)|reshape\(-1, 1\))$", name)
    return m.group(1) if m else name


def _broadcast(f: Failure, a: Operand | None = None, b: Operand | None = None) -> Explanation | None:
    m = re.search(
        r"size of tensor a \((\d+)\) must match the size of tensor b \((\d+)\) at non-singleton dimension (\d+)",
        f.message,
    )
    if m is None or len(f.operands) < 2:
        return None
    a = a or f.operands[0]
    b = b or f.operands[1]
    sa, sb = int(m.group(1)), int(m.group(2))
    n = max(len(a.shape), len(b.shape))
    pa, pb = (1,) * (n - len(a.shape)) + tuple(a.shape), (1,) * (n - len(b.shape)) + tuple(b.shape)
    clash = [d - n for d in range(n) if pa[d] != pb[d] and 1 not in (pa[d], pb[d])]
    where = f"dim {clash[0]} is {pa[clash[0]]} vs {pb[clash[0]]}" if clash else f"{sa} vs {sb}"
    return Explanation(
        f"{_head(f, a, b)}; they do not broadcast (aligned from the right, each size must be equal or 1): {where}.",
        f"Make {a.name} and {b.name} agree in that dimension (unsqueeze/expand the one that lacks it, or fix where "
        "the other comes from).",
        _data(f, "broadcast", expected=sa, actual=sb, dims=clash),
    )


def _conv(f: Failure) -> Explanation | None:
    if not f.operands:
        return None
    x, layer, text = f.operands[0], f.layer, f.message
    name = layer.describe() if layer is not None else f"the {f.op} weight"
    short = layer.name if layer is not None else "the convolution"
    m = re.search(r"expected input\[[\d, ]*\] to have (\d+) channels, but got (\d+) channels", text)
    if m is not None:
        want, got = int(m.group(1)), int(m.group(2))
        why = f"{x.name} has {got} channel(s) in dim 1, but {name} expects {want} input channels"
        if x.shape and x.shape[-1] == want and len(x.shape) >= 3:
            order = ", ".join(map(str, [0, len(x.shape) - 1, *range(1, len(x.shape) - 1)]))
            fix = f"{x.name} looks channels-last; convolutions take (N, C, ...): {x.name}.permute({order})."
        elif layer is not None and "in_channels" in layer.attrs:
            fix = f"in_channels={got} for {short}" + (f" at {layer.made}" if layer.made else "")
            fix += f", or give {x.name} {want} channels."
        else:
            fix = f"Give {x.name} {want} channels in dim 1."
        return Explanation(f"{_head(f, x)}; {why}.", fix, _data(f, "conv-channels", expected=want, actual=got))
    m = re.search(r"Expected (\d+)D \(unbatched\) or (\d+)D \(batched\) input to (\w+), but got input of size: ", text)
    if m is not None:
        batched = int(m.group(2))
        fix = f"Give {x.name} {batched} dimensions: (N, C, ...spatial)."
        if len(x.shape) == 2 and batched == 4:
            side = math.isqrt(x.shape[1])
            if side * side == x.shape[1]:
                fix = f"{x.name}.view(-1, 1, {side}, {side}): one channel of {side}x{side} per sample."
        elif len(x.shape) == batched - 1:
            fix = f"{x.name}.unsqueeze(1) for a single channel (or unsqueeze(0) for one sample)."
        return Explanation(
            f"{_head(f, x)}; {m.group(3)} takes {batched}-D input (N, C, ...), {x.name} is {len(x.shape)}-D.",
            fix,
            _data(f, "conv-dims", expected=batched, actual=len(x.shape)),
        )
    if "Kernel size can't be greater than actual input size" in text or "Output size is too small" in text:
        spatial = fmt(x.shape[2:]) if len(x.shape) > 2 else fmt(x.shape)
        return Explanation(
            f"{_head(f, x)}; its spatial size {spatial} is too small for {name if layer else f.op} (the layers "
            "before it shrink the input too much).",
            "Use a larger input, padding, or fewer downsampling layers before this one.",
            _data(f, "conv-spatial", actual=list(x.shape)),
        )
    return None


def _norm(f: Failure) -> Explanation | None:
    if not f.operands:
        return None
    x, layer, text = f.operands[0], f.layer, f.message
    name = layer.describe() if layer is not None else f.op
    m = re.search(r"running_mean should contain (\d+) elements not (\d+)", text)
    if m is not None:
        got, want = int(m.group(1)), int(m.group(2))
        fix = f"nn.{layer.cls if layer else 'BatchNorm1d'}({got})" + (
            f" at {layer.made}" if layer and layer.made else ""
        )
        if len(x.shape) == 3 and x.shape[-1] == want:
            fix = f"{x.name}.transpose(1, 2): batch norm normalises dim 1, and {x.name} has its {want} features last"
        return Explanation(
            f"{_head(f, x)}; it has {got} features in dim 1, but {name} expects {want}.",
            fix + ".",
            _data(f, "norm", expected=want, actual=got),
        )
    m = re.search(r"normalized_shape=\[([\d, ]*)\], expected input with shape \[\*, ([\d, ]*)\]", text)
    if m is not None:
        want = _ints(m.group(1))
        got = list(x.shape[-len(want) :]) if want else []
        return Explanation(
            f"{_head(f, x)}; {name} normalises the last dimension(s) {fmt(want)}, {x.name}'s are {fmt(got)}.",
            f"normalized_shape={fmt(got)} if {x.name} is right, else fix what makes it.",
            _data(f, "norm", expected=want, actual=got),
        )
    if "more than 1 value per channel" in text:
        return Explanation(
            f"{_head(f, x)}; in training mode batch norm needs more than one value per channel, and this batch "
            "has one.",
            "drop_last=True in the DataLoader (a last batch of one sample), or model.eval() to run a single sample.",
            _data(f, "norm-batch", expected=2, actual=1),
        )
    return None


def _rnn(f: Failure) -> Explanation | None:
    if not f.operands:
        return None
    x, layer, text = f.operands[0], f.layer, f.message
    name = layer.describe() if layer is not None else f.op
    m = re.search(r"input\.size\(-1\) must be equal to input_size\. Expected (\d+), got (\d+)", text)
    if m is not None:
        want, got = int(m.group(1)), int(m.group(2))
        fix = f"input_size={got} for {layer.name if layer else f.op}"
        if want in x.shape[:-1]:
            where = x.shape.index(want)
            fix = f"the features must be the last dimension: {x.name}'s dim {where} is {want} (a transpose?)"
        return Explanation(
            f"{_head(f, x)}; its last dimension is {got}, but {name} expects input_size {want}.",
            fix + ".",
            _data(f, "rnn-input", expected=want, actual=got),
        )
    m = re.search(r"Expected hidden(?:\[\d\])? size \(([\d, ]*)\), got \[([\d, ]*)\]", text)
    if m is not None:
        want, got = _ints(m.group(1)), _ints(m.group(2))
        hidden = f.operands[1] if len(f.operands) > 1 else None
        h = hidden.describe() if hidden is not None else f"the hidden state is {fmt(got)}"
        why = f"{name} expects the hidden state (num_layers * directions, batch, hidden_size) = {fmt(want)}"
        fix = "Make the initial state (num_layers * directions, batch, hidden_size) from the input's batch size."
        if len(want) == 3 and len(got) == 3 and want[2] != got[2]:
            why += f": the state has {got[2]} features, the layer's hidden_size is {want[2]}"
            fix = (
                f"Give both the same hidden size ({got[2]} or {want[2]}), or project the state first "
                f"(nn.Linear({got[2]}, {want[2]}))."
            )
        elif len(want) == 3 and len(got) == 3 and want[0] != got[0]:
            why += f": num_layers * directions is {want[0]}, the state has {got[0]}"
            fix = f"Make the state ({want[0]}, batch, {want[2]}): one slice per layer and direction."
        elif len(want) == 3 and len(got) == 3 and want[1] != got[1]:
            why += f": it was made for a batch of {got[1]}, the input has {want[1]}"
            fix = (
                "Make the initial state for each batch from its size (torch.zeros(layers, x.size(0 if batch_first else "
                "1), hidden)), or pass none; with batch_first=True the state is still (layers, batch, hidden)."
            )
        return Explanation(
            f"{f.call} at {f.where}: {x.describe()}; {h}; {why}.",
            fix,
            _data(f, "rnn-hidden", expected=want, actual=got),
        )
    m = re.search(r"Expected input to be (\d)D or (\d)D, got (\d)D", text)
    if m is not None:
        return Explanation(
            f"{_head(f, x)}; {name} takes 2-D or 3-D input ((L, N, H_in), or (N, L, H_in) with batch_first=True), "
            f"{x.name} is {m.group(3)}-D.",
            f"Reshape {x.name} to (batch, sequence, features) and pass batch_first=True, or (sequence, batch, "
            "features).",
            _data(f, "rnn-dims", expected=[2, 3], actual=int(m.group(3))),
        )
    return None


def _attention(f: Failure) -> Explanation | None:
    m = re.search(r"expecting embedding dimension of (\d+), but got (\d+)", f.message)
    if m is None or not f.operands:
        return None
    want, got = int(m.group(1)), int(m.group(2))
    x, layer = f.operands[0], f.layer
    name = layer.describe() if layer is not None else "the attention layer"
    return Explanation(
        f"{_head(f, x)}; its last dimension is {got}, but {name} has embed_dim {want}.",
        f"embed_dim={got}, or project {x.name} to {want} features first"
        + ("" if layer is None or layer.attrs.get("batch_first") else " (batch_first=False takes (L, N, E))")
        + ".",
        _data(f, "attention", expected=want, actual=got),
    )


def _dim_index(f: Failure) -> Explanation | None:
    m = re.search(
        r"Dimension out of range \(expected to be in range of \[(-?\d+), (-?\d+)\], but got (-?\d+)\)", f.message
    )
    if m is None or not f.operands:
        return None
    x = f.operands[0]
    return Explanation(
        f"{_head(f, x)}; {x.name} has {len(x.shape)} dimension(s), so dim {m.group(3)} does not exist (valid: "
        f"{m.group(1)} to {m.group(2)}).",
        f"{x.name} has fewer dimensions than this line assumes: a missing batch dimension (unsqueeze(0)), or a "
        "squeeze/flatten upstream.",
        _data(f, "dim-range", expected=int(m.group(3)), actual=len(x.shape)),
    )


def generic(f: Failure) -> Explanation:
    head = _head(f) if f.operands else f"{f.call} at {f.where}"
    layer = f"; it runs in {f.layer.describe()}" if f.layer is not None else ""
    text = f.message.strip().splitlines()[0] if f.message.strip() else ""
    return Explanation(
        f"{head}{layer}; PyTorch: {text}",
        "Compare these shapes with what the operation needs, and fix the tensor whose size is off where it is made.",
        _data(f, "other", **({"message": text} if text else {})),
    )


_FAMILIES = (
    (_expand, lambda op, text: "expanded size of the tensor" in text),
    (_einsum, lambda op, text: op == "einsum" or "einsum()" in text),
    (_view, lambda op, text: op in _VIEWS or "size and stride" in text or "is invalid for input of size" in text),
    (_matmul, lambda op, text: op in _MATMULS or "cannot be multiplied" in text or "batch2 tensor" in text),
    (_join, lambda op, text: op in _JOINS),
    (_loss, lambda op, text: is_loss(op)),
    (_conv, lambda op, text: op.startswith(("conv", "max_pool", "avg_pool", "Conv")) or "channels, but got" in text),
    (_norm, lambda op, text: op in ("batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm")),
    (_rnn, lambda op, text: op in ("LSTM", "GRU", "RNN", "lstm", "gru", "rnn_tanh", "rnn_relu")),
    (_attention, lambda op, text: "embedding dimension" in text),
    (_dim_index, lambda op, text: "Dimension out of range" in text),
    (_broadcast, lambda op, text: "must match the size of tensor b" in text),
)
