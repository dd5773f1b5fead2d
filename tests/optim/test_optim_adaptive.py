"""AdamTau, Yogi and Adagrad (fedopt/optim/functional/adaptive.py): two float64 steps against
the rules of docs/optimizers.md in plain Python scalars, through the functional ``update`` and
the torch-style class; closed-form first steps."""
from __future__ import annotations

import math

import pytest
import torch

import fedopt.optim as O
from fedopt.optim import make

from .helpers import single_thread  # noqa: F401
from .test_optim_handcomputed import GRADS, X0, check, t64


def sign(z: float) -> float:
    return (z > 0) - (z < 0)


def oracle_tau(rule, lr, betas, eps, weight_decay, v0, bias_correction):
    """AdamTau / Yogi: m = β1 m + (1−β1) g; v by the rule; x −= α_t m / (√v + ε)."""
    b1, b2 = betas
    x, m, v, out = list(X0), [0.0] * 2, [v0] * 2, []
    for t, g in enumerate(GRADS, 1):
        for i in range(2):
            gi = g[i] + weight_decay * x[i]
            m[i] = b1 * m[i] + (1 - b1) * gi
            if rule == "adamtau":
                v[i] = b2 * v[i] + (1 - b2) * gi * gi
            else:
                v[i] = v[i] - (1 - b2) * gi * gi * sign(v[i] - gi * gi)
            alpha = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) if bias_correction else lr
            x[i] -= alpha * m[i] / (math.sqrt(v[i]) + eps)
        out.append(list(x))
    return out


def oracle_adagrad(lr, beta1, eps, weight_decay, v0):
    x, m, v, out = list(X0), [0.0] * 2, [v0] * 2, []
    for g in GRADS:
        for i in range(2):
            gi = g[i] + weight_decay * x[i]
            v[i] += gi * gi
            m[i] = beta1 * m[i] + (1 - beta1) * gi
            x[i] -= lr * m[i] / (math.sqrt(v[i]) + eps)
        out.append(list(x))
    return out


CASES = [
    ("adamtau", dict(lr=0.1, betas=(0.8, 0.9), eps=1e-2),
     lambda: oracle_tau("adamtau", 0.1, (0.8, 0.9), 1e-2, 0.0, 0.0, True)),
    ("adamtau", dict(lr=0.1, betas=(0.8, 0.9), eps=1e-2, weight_decay=0.2,
                     initial_accumulator_value=1e-4, bias_correction=False),
     lambda: oracle_tau("adamtau", 0.1, (0.8, 0.9), 1e-2, 0.2, 1e-4, False)),
    ("yogi", dict(lr=0.1, betas=(0.8, 0.9), eps=1e-2),
     lambda: oracle_tau("yogi", 0.1, (0.8, 0.9), 1e-2, 0.0, 1e-6, True)),
    # v_0 = 0.05 lies between the two coordinates' g² (0.09 and 0.04): both signs of the rule
    ("yogi", dict(lr=0.1, betas=(0.8, 0.9), eps=1e-2, weight_decay=0.2,
                  initial_accumulator_value=0.05, bias_correction=False),
     lambda: oracle_tau("yogi", 0.1, (0.8, 0.9), 1e-2, 0.2, 0.05, False)),
    ("adagrad", dict(lr=0.1), lambda: oracle_adagrad(0.1, 0.0, 1e-10, 0.0, 0.0)),
    ("adagrad", dict(lr=0.1, beta1=0.7, eps=1e-2, weight_decay=0.2,
                     initial_accumulator_value=0.3),
     lambda: oracle_adagrad(0.1, 0.7, 1e-2, 0.2, 0.3)),
]
CLASSES = {"adamtau": O.AdamTau, "yogi": O.Yogi, "adagrad": O.Adagrad}
IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(CASES)]


@pytest.mark.parametrize("name,kwargs,oracle", CASES, ids=IDS)
def test_functional_two_steps(name, kwargs, oracle):
    expected = oracle()
    opt = make(name, **kwargs)
    params = {"x": t64(X0)}
    state = opt.init(params)
    for t, g in enumerate(GRADS, 1):
        params, state = opt.update(params, {"x": t64(g)}, state)
        check(params["x"], expected[t - 1])
        assert int(state["step"]) == t


@pytest.mark.parametrize("name,kwargs,oracle", CASES, ids=IDS)
def test_class_two_steps(name, kwargs, oracle):
    expected = oracle()
    x = torch.nn.Parameter(t64(X0))
    opt = CLASSES[name]([x], **kwargs)
    for t, g in enumerate(GRADS, 1):
        x.grad = t64(g)
        opt.step()
        check(x.detach(), expected[t - 1])


def test_adamtau_first_step_is_lr_times_sign():
    """t = 1, v_0 = 0: α_1 = η √(1−β2)/(1−β1), m = (1−β1)g, √v = √(1−β2)|g|, so with ε -> 0
    every coordinate moves by η sign(g), as in Adam."""
    opt = make("adamtau", lr=0.01, eps=1e-30)
    params = {"x": t64([0.3, -0.7, 2.0])}
    new, _ = opt.update(params, {"x": t64([1e-3, -5.0, 40.0])}, opt.init(params))
    check(new["x"], [0.29, -0.69, 1.99])


def test_yogi_literal_values():
    """By hand: v_0 = 0.25, g = (0.1, 2): g² = (0.01, 4); β2 = 0.99 so
    v_1 = 0.25 − 0.01·0.01·(+1) = 0.2499 and 0.25 − 0.01·4·(−1) = 0.29; unbiased, β1 = 0:
    x_1 = x_0 − η g/(√v_1 + ε)."""
    opt = make("yogi", lr=0.5, betas=(0.0, 0.99), eps=0.5, initial_accumulator_value=0.25,
               bias_correction=False)
    params = {"x": t64([0.0, 0.0])}
    new, state = opt.update(params, {"x": t64([0.1, 2.0])}, opt.init(params))
    check(state["buffers"]["x"]["exp_avg_sq"], [0.2499, 0.29])
    check(new["x"], [-0.5 * 0.1 / (math.sqrt(0.2499) + 0.5), -0.5 * 2.0 / (math.sqrt(0.29) + 0.5)])


def test_adagrad_without_first_moment_keeps_only_the_sum():
    opt = make("adagrad", lr=1.0, eps=1.0, initial_accumulator_value=3.0)
    params = {"x": t64([0.0])}
    state = opt.init(params)
    assert set(state["buffers"]["x"]) == {"sum"}
    new, state = opt.update(params, {"x": t64([1.0])}, state)   # v = 4, x = −1/(2 + 1)
    check(new["x"], [-1.0 / 3.0])
    check(state["buffers"]["x"]["sum"], [4.0])
