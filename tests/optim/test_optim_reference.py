"""100-step trajectories on a small MLP against reference implementations: torch.optim
(SGD, Adam, AdamW) and, when installed, pytorch_optimizer (DiffGrad, AdaBelief, Adan, Lion,
EXAdam, and SophiaH/AdaHessian fed the same supplied Hessian estimates)."""
from __future__ import annotations

import pytest
import torch

import fedopt.optim as O

from .helpers import flat_params, regression_data, single_thread, small_mlp, train  # noqa: F401

TORCH_CASES = [
    (O.SGD, torch.optim.SGD, dict(lr=0.05)),
    (O.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    (O.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (O.Adam, torch.optim.Adam, dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8)),
    (O.Adam, torch.optim.Adam, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01)),
    (O.Adam, torch.optim.Adam, dict(lr=0.01, amsgrad=True)),
    (O.AdamW, torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1)),
    (O.AdamW, torch.optim.AdamW, dict(lr=0.01, weight_decay=0.0)),
    (O.AdamW, torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    (O.Adagrad, torch.optim.Adagrad, dict(lr=0.05)),
    (O.Adagrad, torch.optim.Adagrad, dict(lr=0.05, eps=1e-3, weight_decay=0.01,
                                          initial_accumulator_value=0.1)),
]
TOL = {torch.float32: dict(rtol=1e-6, atol=1e-6), torch.float64: dict(rtol=1e-12, atol=1e-12)}


def trajectory(cls, kwargs, dtype, steps=100):
    model = small_mlp(dtype)
    X, Y = regression_data(dtype)
    opt = cls(model.parameters(), **kwargs)
    losses = train(model, opt, X, Y, steps)
    return flat_params(model), losses


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("ours,ref,kwargs", TORCH_CASES,
                         ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(TORCH_CASES)])
def test_matches_torch_optim(ours, ref, kwargs, dtype):
    x_ours, l_ours = trajectory(ours, kwargs, dtype)
    if ref is torch.optim.SGD:
        kwargs = dict(kwargs, foreach=False)
    x_ref, l_ref = trajectory(ref, kwargs, dtype)
    torch.testing.assert_close(x_ours, x_ref, **TOL[dtype])
    assert l_ours[-1] < l_ours[0]


PO_CASES = [
    (O.DiffGrad, "DiffGrad", dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                                  weight_decouple=False)),
    (O.DiffGrad, "DiffGrad", dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                                  weight_decouple=True)),
    (O.AdaBelief, "AdaBelief", dict(lr=0.01, betas=(0.9, 0.999), eps=1e-16, weight_decay=0.01,
                                    weight_decouple=True)),
    (O.AdaBelief, "AdaBelief", dict(lr=0.01, betas=(0.9, 0.999), eps=1e-16, weight_decay=0.01,
                                    weight_decouple=False)),
    (O.Adan, "Adan", dict(lr=0.01, betas=(0.98, 0.92, 0.99), eps=1e-8, weight_decay=0.01,
                          weight_decouple=False)),
    (O.Adan, "Adan", dict(lr=0.01, betas=(0.98, 0.92, 0.99), eps=1e-8, weight_decay=0.01,
                          weight_decouple=True)),
    (O.Lion, "Lion", dict(lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)),
    (O.EXAdam, "EXAdam", dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                              weight_decouple=True)),
    (O.EXAdam, "EXAdam", dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                              weight_decouple=False)),
]


@pytest.mark.parametrize("ours,ref_name,kwargs", PO_CASES,
                         ids=[f"{c[1]}-{i}" for i, c in enumerate(PO_CASES)])
def test_matches_pytorch_optimizer(ours, ref_name, kwargs):
    po = pytest.importorskip("pytorch_optimizer")
    x_ours, _ = trajectory(ours, kwargs, torch.float64)
    x_ref, _ = trajectory(getattr(po, ref_name), kwargs, torch.float64)
    torch.testing.assert_close(x_ours, x_ref, rtol=1e-10, atol=1e-12)


def supplied_hessian_trajectory(cls, kwargs, steps=100):
    dtype = torch.float64
    model = small_mlp(dtype)
    X, Y = regression_data(dtype)
    opt = cls(model.parameters(), **kwargs)
    gen = torch.Generator().manual_seed(7)
    for _ in range(steps):
        opt.zero_grad()
        ((model(X) - Y) ** 2).mean().backward()
        hess = [torch.rand(p.shape, generator=gen, dtype=dtype) * 2 - 0.5
                for p in model.parameters()]
        opt.step(hessian=hess)
    return flat_params(model)


@pytest.mark.parametrize("ours,ref_name,kwargs", [
    (O.Sophia, "SophiaH", dict(lr=0.01, betas=(0.96, 0.99), eps=1e-12, weight_decay=0.01,
                               p=0.05, update_period=3)),
    (O.AdaHessian, "AdaHessian", dict(lr=0.01, betas=(0.9, 0.999), eps=1e-16,
                                      weight_decay=0.01, hessian_power=1.0, update_period=2)),
    (O.AdaHessian, "AdaHessian", dict(lr=0.01, betas=(0.9, 0.999), eps=1e-16,
                                      weight_decay=0.01, hessian_power=0.7)),
], ids=["sophia", "adahessian", "adahessian-power"])
def test_supplied_hessian_matches_pytorch_optimizer(ours, ref_name, kwargs):
    po = pytest.importorskip("pytorch_optimizer")
    x_ours = supplied_hessian_trajectory(ours, kwargs)
    x_ref = supplied_hessian_trajectory(getattr(po, ref_name), kwargs)
    torch.testing.assert_close(x_ours, x_ref, rtol=1e-10, atol=1e-12)
