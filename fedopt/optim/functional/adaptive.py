r"""Adaptive rules with ε outside the root and a chosen initial accumulator: AdamTau, Yogi and
Adagrad, the rules of Reddi et al., "Adaptive Federated Optimization" (ICLR 2021), where ε is
their "adaptivity" τ, and of the Keras / TF-Addons optimizers the authors' experiments ran.

Common form (elementwise; g after optional coupled decay g ← g + λx):

    m_t = β1 m_{t−1} + (1 − β1) g          (Adagrad with β1 = 0: m_t = g, no buffer)
    v_t = rule(v_{t−1}, g²),               v_0 = ``initial_accumulator_value``
    α_t = η √(1 − β2^t) / (1 − β1^t)  with ``bias_correction``, else α_t = η
    x_t = x_{t−1} − α_t m_t / (√v_t + ε)

    AdamTau: v_t = β2 v_{t−1} + (1 − β2) g²
    Yogi:    v_t = v_{t−1} − (1 − β2) g² sign(v_{t−1} − g²)
    Adagrad: v_t = v_{t−1} + g²                 (no β2, never bias-corrected)

Unlike torch's Adam (ε added to √v̂_t after the bias correction), ε here is added to the raw
√v_t and the bias correction is folded into the step size α_t (Kingma & Ba's "ε̂" form, Keras).
The server optimizers of :mod:`fedopt.algorithms.server_opt` are these rules applied to the
pseudo-gradient g = −Δ_t.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor

from fedopt.optim.core import (
    FunctionalOptimizer, Scalar, StepContext, as_float64, check_hparam, is_zero, lin,
    subtract_from)
from fedopt.optim.functional._checks import (
    check_betas, check_bool, check_eps, check_lr, check_weight_decay)


def _check_initial(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"invalid initial_accumulator_value: {value!r} "
                         f"(need a finite Python number >= 0)")


@dataclass(frozen=True)
class _TauMoments(FunctionalOptimizer):
    """Base of AdamTau and Yogi: first moment, a second-moment ``rule``, α_t and ε = τ."""

    buffers = ("exp_avg", "exp_avg_sq")

    @property
    def bias_corrected(self) -> bool:  # the core keeps β_i^t only when asked
        return self.bias_correction

    def validate(self) -> None:
        check_lr(self.lr)
        check_betas(self.betas, 2)
        check_eps(self.eps)
        check_weight_decay(self.weight_decay)
        _check_initial(self.initial_accumulator_value)
        check_bool("bias_correction", self.bias_correction)

    def init_tensor(self, x: Tensor) -> dict[str, Tensor]:
        return {"exp_avg": torch.zeros_like(x),
                "exp_avg_sq": torch.full_like(x, float(self.initial_accumulator_value))}

    def coefficients(self, beta_pows: Mapping[str, Tensor]) -> dict[str, Scalar]:
        b1, b2 = (as_float64(b) for b in self.betas)
        step_size: Scalar = self.lr
        if self.bias_correction:
            step_size = as_float64(self.lr) * torch.sqrt(1 - beta_pows["beta2"]) \
                / (1 - beta_pows["beta1"])
        return {"b1": b1, "omb1": 1 - b1, "b2": b2, "omb2": 1 - b2, "eps": self.eps,
                "wd": self.weight_decay, "step_size": step_size}

    def second_moment(self, v: Tensor, g2: Tensor, c: StepContext, x: Tensor) -> Tensor:
        raise NotImplementedError

    def update_tensor(self, x: Tensor, g: Tensor, buf: dict[str, Tensor], c: StepContext,
                      h: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        if not is_zero(self.weight_decay):
            g = (x * c("wd", x)).add_(g)
        m = lin(buf["exp_avg"], c("b1", x), g, c("omb1", x))
        v = self.second_moment(buf["exp_avg_sq"], g * g, c, x)
        denom = torch.sqrt(v).add_(c("eps", x))
        return subtract_from(x, (m * c("step_size", x)).div_(denom)), \
            {"exp_avg": m, "exp_avg_sq": v}


@dataclass(frozen=True)
class AdamTau(_TauMoments):
    r"""Adam with ε (τ) outside the root: v_t = β2 v + (1 − β2) g²,
    x ← x − α_t m/(√v + ε). With the defaults it is Keras' Adam (ε̂ form); with
    ``bias_correction=False, initial_accumulator_value=ε²`` it is the FedAdam box of
    Reddi et al."""

    lr: Scalar = 1e-3
    betas: tuple[Scalar, Scalar] = (0.9, 0.999)
    eps: Scalar = 1e-8
    weight_decay: Scalar = 0.0
    initial_accumulator_value: float = 0.0
    bias_correction: bool = True

    def second_moment(self, v: Tensor, g2: Tensor, c: StepContext, x: Tensor) -> Tensor:
        return (v * c("b2", x)).add_(g2.mul_(c("omb2", x)))


@dataclass(frozen=True)
class Yogi(_TauMoments):
    r"""Yogi (Zaheer et al., NeurIPS 2018): v_t = v − (1 − β2) g² sign(v − g²), so v grows by
    at most (1 − β2)g² when g² > v and shrinks slowly otherwise. Defaults as TF-Addons' Yogi
    (bias-corrected step size, v_0 = 1e-6, ε = 1e-3)."""

    lr: Scalar = 1e-2
    betas: tuple[Scalar, Scalar] = (0.9, 0.999)
    eps: Scalar = 1e-3
    weight_decay: Scalar = 0.0
    initial_accumulator_value: float = 1e-6
    bias_correction: bool = True

    def second_moment(self, v: Tensor, g2: Tensor, c: StepContext, x: Tensor) -> Tensor:
        sign = torch.sign(v - g2)
        return v - (g2 * c("omb2", x)).mul_(sign)


@dataclass(frozen=True)
class Adagrad(FunctionalOptimizer):
    r"""Adagrad with an optional first moment: v_t = v + g²;  m_t = β1 m + (1 − β1) g
    (m_t = g when ``beta1`` is the number 0);  x ← x − η m_t/(√v_t + ε).

    The defaults are torch.optim.Adagrad's (without its ``lr_decay``: use a schedule);
    ``beta1`` > 0 with ``initial_accumulator_value=ε²`` is the FedAdagrad box of Reddi et al."""

    lr: Scalar = 1e-2
    beta1: Scalar = 0.0
    eps: Scalar = 1e-10
    weight_decay: Scalar = 0.0
    initial_accumulator_value: float = 0.0

    def validate(self) -> None:
        check_lr(self.lr)
        check_hparam("beta1", self.beta1, low=0.0, high=1.0)
        check_eps(self.eps)
        check_weight_decay(self.weight_decay)
        _check_initial(self.initial_accumulator_value)

    def buffer_names(self) -> tuple[str, ...]:
        return ("sum",) if is_zero(self.beta1) else ("exp_avg", "sum")

    def init_tensor(self, x: Tensor) -> dict[str, Tensor]:
        out = {"sum": torch.full_like(x, float(self.initial_accumulator_value))}
        if not is_zero(self.beta1):
            out["exp_avg"] = torch.zeros_like(x)
        return out

    def coefficients(self, beta_pows: Mapping[str, Tensor]) -> dict[str, Scalar]:
        b1 = as_float64(self.beta1)
        return {"lr": self.lr, "b1": b1, "omb1": 1 - b1, "eps": self.eps,
                "wd": self.weight_decay}

    def update_tensor(self, x: Tensor, g: Tensor, buf: dict[str, Tensor], c: StepContext,
                      h: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        if not is_zero(self.weight_decay):
            g = (x * c("wd", x)).add_(g)
        v = buf["sum"] + g * g
        new = {"sum": v}
        m = g
        if not is_zero(self.beta1):
            m = new["exp_avg"] = lin(buf["exp_avg"], c("b1", x), g, c("omb1", x))
        denom = torch.sqrt(v).add_(c("eps", x))
        return subtract_from(x, (m * c("lr", x)).div_(denom)), new
