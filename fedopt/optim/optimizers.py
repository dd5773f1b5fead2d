"""``torch.optim``-style optimizer classes: drop-in replacements with torch keyword names.

Each class is a thin shell over :class:`~fedopt.optim.adapter.FunctionalAdapter`; the update
rules live once in :mod:`fedopt.optim.functional` (their exact rules: docs/optimizers.md).
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor

from fedopt.optim import functional as F
from fedopt.optim.adapter import FunctionalAdapter, HessianAdapter

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]]
Betas2 = tuple[float, float]


class SGD(FunctionalAdapter):
    """SGD with momentum/dampening/Nesterov/L2 decay, as ``torch.optim.SGD``."""

    functional = F.SGD

    def __init__(self, params: ParamsT, lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False) -> None:
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov)


class Adam(FunctionalAdapter):
    """Adam with coupled (L2) weight decay, as ``torch.optim.Adam``."""

    functional = F.Adam

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: Betas2 = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad)


class AdamW(FunctionalAdapter):
    """AdamW (decoupled weight decay), as ``torch.optim.AdamW``."""

    functional = F.AdamW

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: Betas2 = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad)


class DiffGrad(FunctionalAdapter):
    """DiffGrad (Dubey et al. 2019). Note ``weight_decouple=False`` (L2 on the gradient) by
    default, unlike pytorch_optimizer."""

    functional = F.DiffGrad

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: Betas2 = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0,
                 weight_decouple: bool = False) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         weight_decouple=weight_decouple)


class AdaBelief(FunctionalAdapter):
    """AdaBelief (Zhuang et al. 2020), without rectification."""

    functional = F.AdaBelief

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: Betas2 = (0.9, 0.999),
                 eps: float = 1e-16, weight_decay: float = 0.0,
                 weight_decouple: bool = True) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         weight_decouple=weight_decouple)


class Adan(FunctionalAdapter):
    """Adan (Xie et al. 2022); betas are keep factors (paper 0.02/0.08/0.01 = 0.98/0.92/0.99).
    ``weight_decouple=False`` is the paper's proximal decay x <- x / (1 + lr lambda)."""

    functional = F.Adan

    def __init__(self, params: ParamsT, lr: float = 1e-3,
                 betas: tuple[float, float, float] = (0.98, 0.92, 0.99), eps: float = 1e-8,
                 weight_decay: float = 0.0, weight_decouple: bool = False) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         weight_decouple=weight_decouple)


class Lion(FunctionalAdapter):
    """Lion (Chen et al. 2023): sign updates with decoupled weight decay."""

    functional = F.Lion

    def __init__(self, params: ParamsT, lr: float = 1e-4, betas: Betas2 = (0.9, 0.99),
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, betas=betas, weight_decay=weight_decay)


class EXAdam(FunctionalAdapter):
    """EXAdam (Adly 2024, pytorch_optimizer variant), without the paper's ln-schedule on lr
    (``LambdaLR(opt, lambda k: math.log(math.sqrt(2 * (k + 2))))`` adds it)."""

    functional = F.EXAdam

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: Betas2 = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0,
                 weight_decouple: bool = True) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         weight_decouple=weight_decouple)


class AdamTau(FunctionalAdapter):
    """Adam with eps outside the root and the bias correction in the step size (Keras' Adam;
    with ``bias_correction=False, initial_accumulator_value=eps**2``, Reddi et al.'s FedAdam)."""

    functional = F.AdamTau

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: Betas2 = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, bias_correction: bool = True) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         initial_accumulator_value=initial_accumulator_value,
                         bias_correction=bias_correction)


class Yogi(FunctionalAdapter):
    """Yogi (Zaheer et al. 2018), defaults as TF-Addons' Yogi."""

    functional = F.Yogi

    def __init__(self, params: ParamsT, lr: float = 1e-2, betas: Betas2 = (0.9, 0.999),
                 eps: float = 1e-3, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 1e-6, bias_correction: bool = True) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         initial_accumulator_value=initial_accumulator_value,
                         bias_correction=bias_correction)


class Adagrad(FunctionalAdapter):
    """Adagrad, as ``torch.optim.Adagrad`` without ``lr_decay``; ``beta1`` > 0 adds Reddi et
    al.'s first moment (FedAdagrad)."""

    functional = F.Adagrad

    def __init__(self, params: ParamsT, lr: float = 1e-2, beta1: float = 0.0,
                 eps: float = 1e-10, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0) -> None:
        super().__init__(params, lr=lr, beta1=beta1, eps=eps, weight_decay=weight_decay,
                         initial_accumulator_value=initial_accumulator_value)


class Sophia(HessianAdapter):
    """SophiaH (Liu et al. 2023): clipped steps preconditioned by a Hutchinson Hessian EMA.

    Every ``update_period`` steps (t = 1, 1 + k, ...) the Hessian diagonal is estimated from
    ``num_samples`` probes (``hessian_distribution``) drawn from the optimizer's generator
    (``seed=0`` or ``generator=``), so the backward pass must keep its graph::

        opt = Sophia(model.parameters(), lr=6e-2, update_period=10, seed=0)
        for x, y in data:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward(create_graph=True)
            opt.step()   # or opt.step(hessian=[h_p for p in params]) with your own estimate
    """

    functional = F.Sophia

    def __init__(self, params: ParamsT, lr: float = 6e-2, betas: Betas2 = (0.96, 0.99),
                 eps: float = 1e-12, weight_decay: float = 0.0, p: float = 1e-2,
                 update_period: int = 10, num_samples: int = 1,
                 hessian_distribution: str = "gaussian", *, seed: int = 0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(params, seed=seed, generator=generator, lr=lr, betas=betas, eps=eps,
                         weight_decay=weight_decay, p=p, update_period=update_period,
                         num_samples=num_samples, hessian_distribution=hessian_distribution)


class AdaHessian(HessianAdapter):
    """AdaHessian (Yao et al. 2021): Adam with the EMA of squared Hutchinson estimates.

    The Hessian diagonal is estimated every ``update_period`` steps by double backward with
    probes from the optimizer's own generator (``seed=0`` or ``generator=``)::

        opt = AdaHessian(model.parameters(), lr=0.1, seed=0)
        for x, y in data:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward(create_graph=True)
            opt.step()   # or opt.step(hessian=[h_p for p in params]) with your own estimate
    """

    functional = F.AdaHessian

    def __init__(self, params: ParamsT, lr: float = 1e-1, betas: Betas2 = (0.9, 0.999),
                 eps: float = 1e-16, weight_decay: float = 0.0, hessian_power: float = 1.0,
                 update_period: int = 1, num_samples: int = 1,
                 hessian_distribution: str = "rademacher", *, seed: int = 0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(params, seed=seed, generator=generator, lr=lr, betas=betas, eps=eps,
                         weight_decay=weight_decay, hessian_power=hessian_power,
                         update_period=update_period, num_samples=num_samples,
                         hessian_distribution=hessian_distribution)


class AdagradNorm(FunctionalAdapter):
    """AdaGrad-Norm (Ward, Wu & Bottou 2020): one accumulator v += ‖g‖² over all parameters of
    a param group, x <- x - lr g/(√v + eps) (:class:`fedopt.optim.functional.AdagradNorm`)."""

    functional = F.AdagradNorm

    def __init__(self, params: ParamsT, lr: float = 1e-2, eps: float = 1e-10,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 1e-2) -> None:
        super().__init__(params, lr=lr, eps=eps, weight_decay=weight_decay,
                         initial_accumulator_value=initial_accumulator_value)


class MFAC(FunctionalAdapter):
    """Dense M-FAC (Frantar, Kurtic & Alistarh 2021): x <- x - lr F^{-1} g with
    F = damp I + (1/k) sum of the last k <= m gradients' outer products, over all parameters of
    a param group jointly (they must share dtype and device). Parameters without a gradient in
    a step contribute zeros and are not moved."""

    functional = F.MFAC

    def __init__(self, params: ParamsT, lr: float = 1e-3, m: int = 32, damp: float = 1e-4,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, m=m, damp=damp, weight_decay=weight_decay)
