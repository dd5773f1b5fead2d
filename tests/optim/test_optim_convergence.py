"""Every optimizer converges on an ill-conditioned quadratic (known optimum) and decreases the
loss of a small MLP, in float32 and float64."""
from __future__ import annotations

import pytest
import torch

import fedopt.optim as O
from fedopt.optim import hutchinson_diag, make, sample_probes
from fedopt.optim.schedules import linear_decay

from .helpers import ALL_NAMES, regression_data, single_thread, small_mlp, train  # noqa: F401

pytestmark = [
    pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
]
D = 10
#: name -> (kwargs, steps, linear-decay the lr to 0?). Adaptive methods with a constant lr
#: hover at a distance ~lr from the optimum, so they get the linear-decay schedule.
QUADRATIC = {
    "sgd": (dict(lr=0.01, momentum=0.9), 300, False),
    "adam": (dict(lr=0.05), 300, True),
    "adamw": (dict(lr=0.05, weight_decay=0.0), 300, True),
    "diffgrad": (dict(lr=0.05), 300, True),
    "adabelief": (dict(lr=0.05), 300, True),
    "adan": (dict(lr=0.05), 1000, True),
    "lion": (dict(lr=0.01), 1000, True),
    "exadam": (dict(lr=0.05), 300, True),
    "sophia": (dict(lr=0.5, p=1.0, update_period=1), 1000, False),
    "adahessian": (dict(lr=0.5), 300, False),
    "mfac": (dict(lr=1.0, m=8, damp=60.0), 1000, False),
    "adamtau": (dict(lr=0.05), 300, True),
    "yogi": (dict(lr=0.05, eps=1e-8), 300, True),
    "adagrad": (dict(lr=0.5), 1000, False),
}
TOL = 1e-4  # relative distance to the optimum, ||x - x*|| / ||x*||


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", ALL_NAMES)
def test_converges_on_ill_conditioned_quadratic(name, dtype):
    """f(x) = 1/2 sum_i a_i (x_i - x*_i)^2 with a_i from 1 to 100 (condition number 100).
    Sophia/AdaHessian get their Hessian diagonal from Rademacher Hutchinson probes through
    torch.func (exact for this diagonal Hessian)."""
    a = torch.logspace(0, 2, D, dtype=dtype)
    x_star = torch.linspace(-1, 1, D, dtype=dtype)
    grad_fn = torch.func.grad(lambda p: 0.5 * (a * (p["x"] - x_star) ** 2).sum())
    kwargs, steps, decay = QUADRATIC[name]
    opt = make(name, **kwargs)
    params = {"x": torch.zeros(D, dtype=dtype)}
    state = opt.init(params)
    gen = torch.Generator().manual_seed(0)
    for k in range(steps):
        step_opt = opt.replace(lr=kwargs["lr"] * linear_decay(k, steps)) if decay else opt
        grads = grad_fn(params)
        hess = None
        if opt.needs_hessian_at(k + 1):
            hess = hutchinson_diag(grad_fn, params, sample_probes(params, 1, "rademacher", gen))
        params, state = step_opt.update(params, grads, state, hessian=hess)
    err = (params["x"] - x_star).norm() / x_star.norm()
    assert err < TOL, f"{name}: relative error {err:.3g} after {steps} steps"


MLP = {
    "SGD": dict(lr=0.1, momentum=0.9), "Adam": dict(lr=0.01), "AdamW": dict(lr=0.01),
    "DiffGrad": dict(lr=0.01), "AdaBelief": dict(lr=0.01), "Adan": dict(lr=0.01),
    "Lion": dict(lr=5e-3), "EXAdam": dict(lr=0.01),
    "Sophia": dict(lr=0.05, p=0.1, update_period=2), "AdaHessian": dict(lr=0.05),
    "MFAC": dict(lr=1e-2, m=8, damp=1e-2),
    "AdamTau": dict(lr=0.01), "Yogi": dict(lr=0.01), "Adagrad": dict(lr=0.05),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cls_name", list(MLP))
def test_decreases_mlp_loss(cls_name, dtype):
    model = small_mlp(dtype)
    X, Y = regression_data(dtype)
    opt = getattr(O, cls_name)(model.parameters(), **MLP[cls_name])
    second_order = cls_name in ("Sophia", "AdaHessian")
    losses = train(model, opt, X, Y, 60, create_graph=second_order)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.75 * losses[0], f"{cls_name}: {losses[0]:.4f} -> {losses[-1]:.4f}"
