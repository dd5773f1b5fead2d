r"""Learning rate as a function of batch size (Granziol, Zohren & Roberts, JMLR 23, 2022):

    scale(b) = b/b₀             rule "linear"  (SGD, SGD with momentum)
             = (b/b₀)^{1/2}     rule "sqrt"    (Adam and the adaptive rules; Adam is the paper's
                                                case, the others our extrapolation)
             = 1                rule "none"
    lr(b) = min(max_lr, lr₀ · scale(b))

b may be a per-client tensor [C]: the result is a per-client learning rate, which every
:mod:`fedopt.optim` functional optimizer accepts. :class:`BatchScaledLR` wraps any of them;
:func:`set_torch_lr` applies the rule to a ``torch.optim`` optimizer's parameter groups.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fedopt.optim.core import FunctionalOptimizer

RULES = ("none", "linear", "sqrt")


def batch_scale(b: int | float | Tensor, b0: int | float, rule: str) -> float | Tensor:
    """scale(b) of the module docstring (float64 for tensors). ValueError for an unknown rule
    or b₀ ≤ 0."""
    if rule not in RULES:
        raise ValueError(f"lr_batch_scaling: one of {RULES}, got {rule!r}")
    if not b0 > 0:
        raise ValueError(f"b0: must be > 0, got {b0!r}")
    if isinstance(b, Tensor):
        r = b.to(torch.float64) / float(b0)
        return torch.ones_like(r) if rule == "none" else (r if rule == "linear" else r.sqrt())
    r = float(b) / float(b0)
    return 1.0 if rule == "none" else (r if rule == "linear" else math.sqrt(r))


@dataclass(frozen=True)
class BatchScaledLR:
    """``inner`` (any functional optimizer with an ``lr``) whose learning rate follows the
    batch size: :meth:`at` returns ``inner`` with lr = min(max_lr, lr₀·scale(b)), lr₀ = inner's
    lr (a float or a per-client tensor). ValueError naming the field for a bad value."""

    inner: FunctionalOptimizer
    b0: int
    rule: str = "sqrt"
    max_lr: float | None = None

    def __post_init__(self) -> None:
        if not hasattr(self.inner, "lr"):
            raise ValueError(f"inner: {type(self.inner).__name__} has no lr to scale")
        batch_scale(self.b0, self.b0, self.rule)
        if self.max_lr is not None and not self.max_lr > 0:
            raise ValueError(f"max_lr: must be > 0, got {self.max_lr!r}")

    def lr(self, b: int | Tensor) -> Any:
        s = batch_scale(b, self.b0, self.rule)
        lr0 = self.inner.lr
        if isinstance(s, Tensor):
            if isinstance(lr0, Tensor):
                s = s.to(lr0.dtype)
            out = lr0 * s
            return out if self.max_lr is None else out.clamp(max=self.max_lr)
        out = lr0 * s
        if self.max_lr is None:
            return out
        return out.clamp(max=self.max_lr) if isinstance(out, Tensor) else min(out, self.max_lr)

    def at(self, b: int | Tensor) -> FunctionalOptimizer:
        """``inner`` with the learning rate of batch size b (int, or int64 [C] per client)."""
        if self.rule == "none":
            return self.inner
        return self.inner.replace(lr=self.lr(b))


def set_torch_lr(optimizer: torch.optim.Optimizer, lr0: float, b: int, b0: int, rule: str,
                 max_lr: float | None = None) -> float:
    """Set every parameter group's ``lr`` to min(max_lr, lr₀·scale(b)); returns it."""
    lr = lr0 * float(batch_scale(b, b0, rule))
    if max_lr is not None:
        lr = min(lr, max_lr)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
