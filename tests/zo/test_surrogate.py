"""FZooS's surrogates against independent facts: the GP gradient posterior recovers the known
gradient of a function drawn from its own prior (and its reported variance shrinks and is
calibrated), RFF features approximate the SE kernel within O(1/√M), the analytic RFF gradient
equals autograd, and aggregation is linear in the coefficients."""
import math

import numpy as np
import torch

from fedopt.zo.surrogate import GPGradient, RandomFeatures, fit_lengthscale, se_kernel


def prior_draw(seed, d=3, ls=0.5, m=20000):
    """f ~ GP(0, SE(ℓ)) approximately, via RFF with many features: f(x) = φ(x)ᵀw, w ~ N(0, I);
    its gradient is known analytically."""
    rff = RandomFeatures(d, m, ls, seed=seed)
    w = torch.randn(m, generator=torch.Generator().manual_seed(10_000 + seed), dtype=torch.float64)
    return (lambda x: rff.features(x) @ w), (lambda x: rff.grad(x, w))


def test_gp_gradient_recovers_a_prior_draws_gradient():
    errs = {20: [], 80: []}
    traces = {20: [], 80: []}
    sq20 = []
    for s in range(40):
        f, grad = prior_draw(s)
        g = torch.Generator().manual_seed(s)
        x_star = torch.rand(3, generator=g, dtype=torch.float64)
        true = grad(x_star[None])[0]
        for n in errs:
            x = x_star + 0.3 * (2 * torch.rand(n, 3, generator=g, dtype=torch.float64) - 1)
            gp = GPGradient(x, f(x), 0.5, 1.0, 1e-8)
            est = gp.mean_grad(x_star[None])[0]
            errs[n].append(float((est - true).norm() / true.norm()))
            traces[n].append(float(gp.cov_trace(x_star[None])[0]))
            if n == 20:
                sq20.append(float((est - true).pow(2).sum()))
    med = {n: np.median(v) for n, v in errs.items()}
    assert med[20] < 0.1 and med[80] < 1e-2 and med[80] < med[20]
    assert np.mean(traces[80]) < np.mean(traces[20])
    assert 0.5 < np.mean(sq20) / np.mean(traces[20]) < 2      # calibrated at small n


def test_fit_lengthscale_prefers_the_true_scale():
    f, _ = prior_draw(3, ls=0.5)
    x = torch.rand(120, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ls = fit_lengthscale(x, f(x), noise=1e-8, grid=25)
    assert 0.3 < ls < 0.8


def test_rff_kernel_and_gradient():
    m = 10_000
    rff = RandomFeatures(4, m, 0.8, seed=1)
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 0.5
    approx = rff.features(x) @ rff.features(x).T
    assert (approx - se_kernel(x, x, 0.8)).abs().max() < 4 * math.sqrt(2.0 / m) * 2
    a = torch.randn(m, dtype=torch.float64)
    p = x[:3].clone().requires_grad_(True)
    (auto,) = torch.autograd.grad((rff.features(p) @ a).sum(), p)
    assert torch.allclose(rff.grad(x[:3], a), auto, atol=1e-10)


def test_aggregation_is_linear_in_the_coefficients():
    rff = RandomFeatures(5, 500, 1.0, seed=7)
    same = RandomFeatures(5, 500, 1.0, seed=7)
    assert torch.equal(rff.omega, same.omega) and torch.equal(rff.b, same.b)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 500, generator=g, dtype=torch.float64)
    w = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    s = torch.tensor([2.0, 0.5, 1.5], dtype=torch.float64)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64)
    server = rff.grad(x, (w * s) @ a)
    clients = sum(w[i] * s[i] * rff.grad(x, a[i]) for i in range(3))
    assert torch.allclose(server, clients, atol=1e-12)
    # a ridge fit interpolates its data (n < M)
    xs = torch.rand(40, 5, generator=g, dtype=torch.float64)
    ys = torch.sin(xs.sum(1))
    assert torch.allclose(rff.features(xs) @ rff.fit(xs, ys, 1e-10), ys, atol=1e-5)


def test_fast_gp_formulas_equal_the_explicit_ones():
    g = torch.Generator().manual_seed(5)
    x = torch.rand(30, 4, generator=g, dtype=torch.float64)
    y = torch.sin(3 * x).sum(1)
    gp = GPGradient(x, y, 0.4, 1.3, 1e-6)
    p = torch.rand(6, 4, generator=g, dtype=torch.float64)
    diff = p[:, None] - x[None]                                          # [P, n, d]
    G = -diff / 0.4 ** 2 * se_kernel(p, x, 0.4, 1.3)[..., None]         # ∂k(p, x_n)/∂p
    k = se_kernel(x, x, 0.4, 1.3) + 1e-6 * torch.eye(30, dtype=x.dtype)
    kinv = torch.linalg.inv(k)
    assert torch.allclose(gp.mean_grad(p), torch.einsum("pnd,n->pd", G, kinv @ y), atol=1e-8)
    explicit = 4 * 1.3 / 0.4 ** 2 - torch.einsum("pnd,nm,pmd->p", G, kinv, G)
    assert torch.allclose(gp.cov_trace(p), explicit, rtol=1e-6, atol=1e-8)
