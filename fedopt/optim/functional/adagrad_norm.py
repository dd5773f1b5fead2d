r"""AdaGrad-Norm (Ward, Wu & Bottou, "AdaGrad stepsizes", JMLR 2020; the rule AdAdaGradNorm
couples with adaptive batch sizes, Lau, Liu & Kolar 2024): one scalar accumulator per client,

    g ← g + λ x                         (optional coupled weight decay λ)
    v_t = v_{t−1} + ‖g‖²                (‖·‖ over every parameter of the client)
    x_t = x_{t−1} − η g / (√v_t + ε)

with v_0 = ``initial_accumulator_value`` (≥ 0). State ``v``: float64 of the batch shape (one
per client). This is the paper's global form; the AdAdaGrad code's per-output-row accumulators
are not implemented.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fedopt.optim.core import (FunctionalOptimizer, Params, Scalar, State, check_batch_shape,
                               coef_dtype, is_zero)
from fedopt.optim.functional._checks import check_eps, check_lr, check_weight_decay
from fedopt.optim.functional.adaptive import _check_initial


def _per_client(value: Scalar | Tensor, x: Tensor, batch_ndim: int) -> Scalar | Tensor:
    if isinstance(value, Tensor) and value.ndim:
        return value.to(x.dtype).view(value.shape + (1,) * (x.ndim - batch_ndim))
    return value


@dataclass(frozen=True)
class AdagradNorm(FunctionalOptimizer):
    """AdaGrad-Norm (module docstring). ``lr`` and ``eps`` may be per-client tensors."""

    lr: Scalar = 1e-2
    eps: Scalar = 1e-10
    weight_decay: Scalar = 0.0
    initial_accumulator_value: float = 1e-2

    elementwise = False

    def validate(self) -> None:
        check_lr(self.lr)
        check_eps(self.eps)
        check_weight_decay(self.weight_decay)
        _check_initial(self.initial_accumulator_value)

    def init(self, params: Params, batch_shape: tuple[int, ...] = ()) -> State:
        batch_shape = tuple(batch_shape)
        check_batch_shape(params, batch_shape)
        device = next(iter(params.values())).device if params else torch.device("cpu")
        return {"step": torch.zeros(batch_shape, dtype=torch.int64, device=device),
                "v": torch.full(batch_shape, float(self.initial_accumulator_value),
                                dtype=coef_dtype(device), device=device),
                "buffers": {}}

    def update(self, params: Params, grads: Params, state: State,
               hessian: Params | None = None) -> tuple[Params, State]:
        step = state["step"] + 1
        self.check_hparam_shapes(step.shape)
        nb = step.ndim
        g = {}
        for name, x in params.items():
            if name not in grads:
                raise ValueError(f"{self.name}: no gradient for parameter {name!r}")
            gi = grads[name]
            if not is_zero(self.weight_decay):
                gi = gi + _per_client(self.weight_decay, x, nb) * x
            g[name] = gi
        sq = sum(v.to(state["v"].dtype).pow(2).flatten(nb).sum(-1) for v in g.values())
        v = state["v"] + sq
        new = {}
        for name, x in params.items():
            den = (v.sqrt().to(x.dtype).view(v.shape + (1,) * (x.ndim - nb))
                   + _per_client(self.eps, x, nb))
            new[name] = x - _per_client(self.lr, x, nb) * g[name] / den
        return new, {"step": step, "v": v, "buffers": {}}
