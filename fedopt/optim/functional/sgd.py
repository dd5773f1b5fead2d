"""SGD with momentum, dampening, Nesterov and coupled weight decay (torch.optim.SGD rules)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor

from fedopt.optim.core import (
    FunctionalOptimizer, Params, Scalar, State, StepContext, as_float64, check_hparam, is_zero,
    lin, subtract_from)
from fedopt.optim.functional._checks import check_bool, check_lr, check_weight_decay


@dataclass(frozen=True)
class SGD(FunctionalOptimizer):
    r"""Stochastic gradient descent.

    g <- g + lambda x;  if mu != 0: b = g at t = 1, else b = mu b + (1 - dampening) g;
    d = g + mu b (nesterov) or b (d = g if mu = 0);  x <- x - lr d.
    """

    lr: Scalar = 1e-3
    momentum: Scalar = 0.0
    dampening: Scalar = 0.0
    weight_decay: Scalar = 0.0
    nesterov: bool = False

    def validate(self) -> None:
        check_lr(self.lr)
        check_hparam("momentum", self.momentum, low=0.0)
        check_hparam("dampening", self.dampening, low=0.0, high=1.0, high_inclusive=True)
        check_weight_decay(self.weight_decay)
        check_bool("nesterov", self.nesterov)
        if self.nesterov:
            check_hparam("momentum", self.momentum, low=0.0, low_inclusive=False)
            check_hparam("dampening", self.dampening, low=0.0, high=0.0, high_inclusive=True)

    def buffer_names(self) -> tuple[str, ...]:
        return () if is_zero(self.momentum) else ("momentum_buffer",)

    def coefficients(self, beta_pows: Mapping[str, Tensor]) -> dict[str, Scalar]:
        return {"lr": self.lr, "wd": self.weight_decay, "mu": self.momentum,
                "one_minus_damp": 1 - as_float64(self.dampening)}

    def update(self, params: Params, grads: Params, state: State,
               hessian: Params | None = None) -> tuple[Params, State]:
        """:meth:`FunctionalOptimizer.update`; plain SGD (Python-number hyperparameters, no
        momentum, no weight decay: x <- x - lr g) skips the generic per-step machinery
        (coefficients, :class:`StepContext`, shape checks that cannot fail for numbers) and
        runs the same two ops per tensor, so the result is bit for bit the generic one's
        (values and memory layouts); about a quarter less time per update of the 100-client
        logistic-regression stack (27 vs 35 µs on CPU)."""
        lr = self.lr
        if (isinstance(lr, Tensor) or isinstance(self.dampening, Tensor)
                or not is_zero(self.momentum) or not is_zero(self.weight_decay)
                or type(self).update_tensor is not SGD.update_tensor):   # a subclass's rule
            return super().update(params, grads, state, hessian=hessian)
        new_params: Params = {}
        for name, x in params.items():
            if name not in grads:
                raise ValueError(f"{self.name}: no gradient for parameter {name!r}")
            new_params[name] = subtract_from(x, grads[name] * lr)
        return new_params, {"step": state["step"] + 1, "buffers": {name: {} for name in params}}

    def update_tensor(self, x: Tensor, g: Tensor, buf: dict[str, Tensor], c: StepContext,
                      h: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        if not is_zero(self.weight_decay):
            g = (x * c("wd", x)).add_(g)
        if is_zero(self.momentum):
            return subtract_from(x, g * c("lr", x)), {}
        mu = c("mu", x)
        b = lin(buf["momentum_buffer"], mu, g, c("one_minus_damp", x))
        b = torch.where(c.first(x), g, b)
        d = (b * mu).add_(g) if self.nesterov else b
        if isinstance(mu, Tensor):  # per-client momentum: mu = 0 means plain SGD
            d = torch.where(mu == 0, g, d)
        return subtract_from(x, d * c("lr", x)), {"momentum_buffer": b}
