"""Leading-batch-dimension handling shared by the built-in models.

A model built for ``input_shape`` accepts ``x`` of shape ``[*lead, *input_shape]`` for any
(possibly empty) ``lead`` and returns ``[*lead, num_classes]``. Under ``torch.func.vmap`` the
mapped client dimension is invisible, so the same code serves one client, a batch of rows, or a
single row (per-example gradients).
"""
from __future__ import annotations

import math

from torch import Tensor


def normalize_input_shape(input_shape: object, field: str = "input_shape") -> tuple[int, ...]:
    """``input_shape`` as a non-empty tuple of positive ints (ValueError naming ``field``)."""
    try:
        shape = tuple(input_shape)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{field}: must be a tuple of positive ints, got {input_shape!r}") from None
    if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0
                            for s in shape):
        raise ValueError(f"{field}: must be a non-empty tuple of positive ints, got {input_shape!r}")
    return shape


def split_lead(x: Tensor, input_shape: tuple[int, ...]) -> tuple[tuple[int, ...], Tensor]:
    """``(lead, x reshaped to [prod(lead), *input_shape])``; ValueError on a shape mismatch."""
    k = len(input_shape)
    if x.ndim < k or tuple(x.shape[x.ndim - k:]) != input_shape:
        raise ValueError(f"model input has shape {tuple(x.shape)}; expected [..., "
                         f"{', '.join(map(str, input_shape))}]")
    lead = tuple(x.shape[: x.ndim - k])
    return lead, x.reshape(math.prod(lead), *input_shape)
