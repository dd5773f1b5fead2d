"""Multinomial logistic regression: ``logits = W · vec(x) + b``, ``W ∈ R^{C×d}``, ``b ∈ R^C``.

With the softmax cross-entropy loss ``ℓ = −log softmax(W x + b)_y`` its gradient is
``∇_W ℓ = (softmax(W x + b) − e_y) xᵀ`` and ``∇_b ℓ = softmax(W x + b) − e_y``; the loss is
convex in ``(W, b)``.
"""
from __future__ import annotations

import math

from torch import Tensor, nn

from fedopt.models import batched
from fedopt.models.shapes import normalize_input_shape, split_lead


class LogisticRegression(nn.Module):
    """Flatten + one ``nn.Linear(d, C)`` with ``d = prod(input_shape)``."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, l2: float = 0.0) -> None:
        super().__init__()
        #: λ of the decentralized algorithms' (λ/2)‖x‖² (config ``model.l2``; not in forward)
        self.l2 = float(l2)
        self.input_shape = normalize_input_shape(input_shape)
        self.linear = nn.Linear(math.prod(self.input_shape), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        lead, flat = split_lead(x, self.input_shape)
        return self.linear(flat.flatten(1)).reshape(*lead, -1)

    def batched_forward(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """C stacked models on x [C, B, *input_shape] (see :mod:`fedopt.models.batched`)."""
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        return batched.linear(flat, params["linear.weight"], params["linear.bias"])
