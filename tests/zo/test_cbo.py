"""CBO against independent facts: the consensus point's limits (mean at α = 0, best particle at
large α, shift invariance, huge energies finite), the σ = 0 contraction, the closed-form proximal
step of consensus hopping on a quadratic (within 4 Monte-Carlo standard errors), batched runs ==
a loop, and step-by-step agreement with the cbx package (CBXpy) fed our noise."""
import numpy as np
import pytest
import torch

from fedopt.zo.cbo import CBO, cbo_step, consensus, effective_sample_size, keyed_noise


def test_consensus_limits_and_invariances():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 4, generator=g, dtype=torch.float64)
    e = torch.rand(3, 7, generator=g, dtype=torch.float64)
    assert torch.allclose(consensus(x, e, 0.0), x.mean(1))
    best = x[torch.arange(3), e.argmin(1)]
    assert torch.allclose(consensus(x, e, 1e6), best)
    assert torch.allclose(consensus(x, e + 123.0, 5.0), consensus(x, e, 5.0))
    big = consensus(x, 1e4 * (1 + e), 3.0)
    assert torch.isfinite(big).all() and torch.allclose(big, best)
    assert torch.allclose(effective_sample_size(e, 0.0), torch.full((3,), 7.0, dtype=e.dtype))


def test_sigma_zero_alpha_zero_contracts_to_the_mean():
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    v = consensus(x, torch.zeros(2, 9, dtype=x.dtype), 0.0)
    new = cbo_step(x, v, torch.randn_like(x), lam=1.0, sigma=0.0, dt=0.1)
    assert torch.allclose(new.mean(1), x.mean(1))
    assert torch.allclose(new - new.mean(1, keepdim=True), 0.9 * (x - x.mean(1, keepdim=True)))


def test_consensus_hopping_is_the_proximal_step_on_a_quadratic():
    """ρ = N(x, σ²I), f(y) = ½yᵀAy − bᵀy: v_α(ρ) = (τA + I)⁻¹(τb + x), τ = ασ²."""
    a = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    b = torch.tensor([1.0, -2.0], dtype=torch.float64)
    x0 = torch.tensor([0.3, 0.8], dtype=torch.float64)
    alpha, sigma, n = 1.0, 0.3, 100_000
    y = x0 + sigma * torch.randn(n, 2, generator=torch.Generator().manual_seed(1),
                                 dtype=torch.float64)
    e = 0.5 * torch.einsum("ni,ij,nj->n", y, a, y) - y @ b
    v = consensus(y, e, alpha)
    tau = alpha * sigma ** 2
    prox = torch.linalg.solve(tau * a + torch.eye(2, dtype=a.dtype), tau * b + x0)
    w = torch.softmax(-alpha * e, 0)
    assert 1 / w.pow(2).sum() > 1e4                                    # ESS
    se = (w.pow(2)[:, None] * (y - v).pow(2)).sum(0).sqrt()            # self-normalised IS
    assert ((v - prox).abs() < 4 * se).all(), (v, prox, se)
    assert not torch.allclose(prox, x0, atol=10 * se.max())             # the step is visible


def rastrigin(x):
    return x.pow(2).sum(-1) + 2.5 * (1 - torch.cos(2 * np.pi * x)).sum(-1)


def test_batched_runs_equal_a_loop_and_find_the_rastrigin_minimum():
    cbo = CBO(alpha=100.0, lam=1.0, sigma=1.6, dt=0.01, seed=3)
    x = 8 + 0.5 * torch.randn(4, 200, 2, generator=torch.Generator().manual_seed(0),
                              dtype=torch.float64)
    xs, vs = x.clone(), []
    for k in range(250):
        xi = keyed_noise(3, k, tuple(x.shape))
        loop = [cbo.step(rastrigin, xs[m:m + 1], k, xi[m:m + 1])[0] for m in range(4)]
        xs = torch.cat(loop)
    final, v, queries = cbo.run(rastrigin, x, 250)
    assert torch.allclose(final, xs, atol=1e-12)
    assert queries == 251 * 4 * 200
    assert (v.abs().amax(1) < 0.25).float().mean() >= 0.75   # global minimiser 0 from (8, 8)


@pytest.mark.parametrize("noise", ["isotropic", "anisotropic"])
def test_matches_cbx_step_by_step_with_shared_noise(noise):
    cbx = pytest.importorskip("cbx")
    from cbx.dynamics import CBO as CbxCBO

    m, n, d, steps = 2, 12, 3, 15
    x0 = np.random.default_rng(0).normal(size=(m, n, d))
    feed = []     # cbx also draws once while it is built: only the steps get our noise

    def sampler(size):
        return feed.pop() if feed else np.zeros(size)

    def f_np(x):
        return (x ** 2).sum(-1) + np.sin(3 * x).sum(-1)

    dyn = CbxCBO(f_np, f_dim="3D", x=x0.copy(), dt=0.05, alpha=4.0, sigma=0.7, lamda=1.0,
                 noise=noise, sampler=sampler, max_it=steps)
    ours = CBO(alpha=4.0, lam=1.0, sigma=0.7, dt=0.05, noise=noise, seed=9)
    x = torch.tensor(x0)
    f_t = lambda t: (t ** 2).sum(-1) + torch.sin(3 * t).sum(-1)   # noqa: E731
    for k in range(steps):
        feed.append(keyed_noise(9, k, (m, n, d)).numpy())
        dyn.step()
        assert not feed
        x, v = ours.step(f_t, x, k)
        assert np.allclose(dyn.consensus.reshape(m, d), v.numpy(), atol=1e-12)
        assert np.allclose(dyn.x, x.numpy(), atol=1e-12)
