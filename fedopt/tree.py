"""Walks over trees of tensors: nested dicts (any ``Mapping``, rebuilt as ``dict``), lists and
tuples whose leaves are tensors or anything else (ints, floats, strings, None).

Model parameters, optimizer states, server states and checkpoints are such trees. Every
function here leaves non-tensor leaves as they are (the same object), keeps the containers'
structure and key order, and never modifies its input. A tensor that appears twice in a tree
(the same object) is transformed once and appears twice in the result, so aliasing survives a
move or a clone (as in a checkpoint).

    map_tensors(fn, tree)          fn on every tensor leaf
    zip_map(fn, a, b)              fn(a_leaf, b_leaf) on tensor leaves at the same path
    leaves(tree)                   the tensor leaves, depth first in key order
    to(tree, device, dtype)        move/cast (dtype applies to floating-point leaves only)
    clone(tree)                    a deep copy of every tensor
    take_rows(tree, index, n)      rows ``index`` of the leaves stacked along a leading dim n
    global_norm(tree)              sqrt(Σ_leaves ‖leaf‖²)
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["map_tensors", "zip_map", "leaves", "to", "clone", "take_rows", "global_norm"]


def _rebuild(node: Any, children: list) -> Any:
    if isinstance(node, tuple) and hasattr(node, "_fields"):  # namedtuple
        return type(node)(*children)
    return type(node)(children)


def map_tensors(fn: Callable[[Tensor], Any], tree: Any) -> Any:
    """``tree`` with every tensor leaf ``x`` replaced by ``fn(x)``; other leaves unchanged.

    Mappings become ``dict``s (same key order), lists stay lists and tuples (including
    namedtuples) stay their type. ``fn`` runs once per distinct tensor object."""
    done: dict[int, Any] = {}

    def go(node: Any) -> Any:
        if isinstance(node, Tensor):
            key = id(node)
            if key not in done:
                done[key] = fn(node)
            return done[key]
        if isinstance(node, Mapping):
            return {k: go(v) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return _rebuild(node, [go(v) for v in node])
        return node

    return go(tree)


def zip_map(fn: Callable[[Tensor, Any], Any], a: Any, b: Any) -> Any:
    """``a`` with every tensor leaf ``x`` replaced by ``fn(x, y)``, ``y`` being the leaf of ``b``
    at the same path (keys of ``a`` are looked up in ``b``; extra keys of ``b`` are ignored).
    Non-tensor leaves of ``a`` are kept. A missing key raises ``KeyError``, a shorter list
    ``IndexError``."""
    if isinstance(a, Tensor):
        return fn(a, b)
    if isinstance(a, Mapping):
        return {k: zip_map(fn, v, b[k]) for k, v in a.items()}
    if isinstance(a, (list, tuple)):
        return _rebuild(a, [zip_map(fn, v, b[i]) for i, v in enumerate(a)])
    return a


def leaves(tree: Any) -> Iterator[Tensor]:
    """The tensor leaves of ``tree``, depth first, mappings in key order."""
    if isinstance(tree, Tensor):
        yield tree
    elif isinstance(tree, Mapping):
        for v in tree.values():
            yield from leaves(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from leaves(v)


def to(tree: Any, device: Any = None, dtype: torch.dtype | None = None) -> Any:
    """Every tensor moved to ``device`` (None: where it is); ``dtype`` (None: unchanged) casts
    floating-point leaves only, so integer counters and boolean masks keep their dtype."""

    def move(x: Tensor) -> Tensor:
        cast = dtype if dtype is not None and x.is_floating_point() else None
        return x.to(device=device, dtype=cast)

    return map_tensors(move, tree)


def clone(tree: Any) -> Any:
    """A copy in which every tensor is ``clone()``d (later in-place ops on the original do not
    show through)."""
    return map_tensors(torch.Tensor.clone, tree)


def take_rows(tree: Any, index: Tensor | Sequence[int], n: int | None = None) -> Any:
    """Rows ``index`` (``index_select`` along dim 0) of every tensor leaf stacked along a
    leading dimension: with ``n`` given, only leaves whose leading size is ``n``; otherwise
    every leaf with at least one dimension. Other leaves (0-dim tensors, per-run scalars) are
    kept as they are. ``index`` is an int64 tensor or a sequence of ints."""

    def rows(x: Tensor) -> Tensor:
        if x.ndim == 0 or (n is not None and x.shape[0] != n):
            return x
        idx = index if isinstance(index, Tensor) else torch.as_tensor(index, dtype=torch.int64)
        return x.index_select(0, idx.to(device=x.device, dtype=torch.int64))

    return map_tensors(rows, tree)


def global_norm(tree: Any) -> Tensor:
    """sqrt(Σ over tensor leaves of ‖leaf‖₂²), the 2-norm of all leaves flattened into one
    vector, as a 0-dim tensor (dtype of the leaves; they must share a device). 0 for a tree
    without tensors."""
    norms = [torch.linalg.vector_norm(x.detach()) for x in leaves(tree)]
    if not norms:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(norms))
