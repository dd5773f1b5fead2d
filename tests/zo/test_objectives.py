"""The synthetic objectives against their known minima and the closed-form optimum helpers."""
import numpy as np
import torch

from fedopt.zo.objectives import (ackley, fzoos_quadratic, fzoos_quadratic_rows, levy,
                                  spd_quadratic, spd_quadratic_optimum, spd_quadratic_rows)


def test_ackley_and_levy_vanish_only_at_the_shifted_origin():
    d = 6
    shift = torch.tensor(np.random.default_rng(0).uniform(-1, 1, size=(1, 1, d)))
    for fn, lb, ub in ((ackley, -32.768, 32.768), (levy, -10.0, 10.0)):
        x_min = ((-shift[0] - lb) / (ub - lb))                      # z = s + lb + (ub−lb)x = 0
        assert abs(float(fn(x_min, shift)[0, 0])) < 1e-12
        others = torch.rand(50, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        assert (fn(others, shift.expand(50, 1, d)) > 1e-3).all()


def test_fzoos_quadratic_minimum_is_the_closed_form():
    d, n = 40, 5
    rows = torch.tensor(fzoos_quadratic_rows(n, d, 0.5, seed=3))
    assert torch.allclose(rows.mean(0), torch.ones(2 * d, dtype=rows.dtype))   # clients average 1
    f = lambda x: fzoos_quadratic(x, rows[None].expand(len(x), n, 2 * d)).mean(1)  # noqa: E731
    x_star = torch.full((1, d), 0.475, dtype=torch.float64)
    assert abs(float(f(x_star)) - (-0.025 + 0.1 / d)) < 1e-12
    g = torch.Generator().manual_seed(0)
    near = x_star + 0.01 * torch.randn(20, d, generator=g, dtype=torch.float64)
    assert (f(near) > f(x_star)).all()


def test_spd_quadratic_optimum_has_zero_gradient():
    d = 4
    rows = spd_quadratic_rows(6, d, seed=2)
    x_star, f_star = spd_quadratic_optimum(rows, d)
    x = torch.tensor(x_star)[None].requires_grad_(True)
    F = spd_quadratic(x, torch.tensor(rows)[None]).mean()
    (g,) = torch.autograd.grad(F, x)
    assert g.abs().max() < 1e-10 and abs(float(F.detach()) - f_star) < 1e-12
    eig = np.linalg.eigvalsh(rows[0, :d * d].reshape(d, d))
    assert eig.min() >= 1 - 1e-9 and eig.max() <= 10 + 1e-9
