"""SA-SRRW against seed_extras.md §7.4: kernel facts, log-space stability, the visit measure's
closed form, α = 0 is the base chain (stationary law), variance falls as α grows, token SGD."""
import numpy as np
import pytest
import torch

from fedopt.decentralized import graphs as G
from fedopt.decentralized.srrw import SRRW, base_chain, kernel, stationary, walk_step
from tests.decentralized.quadratic import Quadratic, bind


def lollipop():
    # a clique of 5 with a path of 4 hanging off node 0: unequal degrees
    edges = [[i, j] for i in range(5) for j in range(i + 1, 5)] + [[0, 5], [5, 6], [6, 7], [7, 8]]
    return G.from_edges(9, edges)


@pytest.mark.parametrize("chain", ["mhrw", "srw"])
def test_kernel_facts(chain):
    g = lollipop()
    p, mu = base_chain(g, chain)
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-14)
    np.testing.assert_allclose(mu @ p, mu, atol=1e-14)                 # μ stationary for P
    np.testing.assert_allclose(kernel(p, mu, mu, 3.0), p, atol=1e-12)  # K[μ] = P
    x = np.random.default_rng(0).dirichlet(np.ones(9))
    np.testing.assert_allclose(kernel(p, mu, x, 0.0), p, atol=1e-12)   # α = 0: K = P
    k = kernel(p, mu, x, 2.5)
    np.testing.assert_allclose(k.sum(1), 1, atol=1e-12)
    assert (k[p == 0] == 0).all()
    pi = stationary(p, mu, x, 2.5)
    flow = pi[:, None] * k
    np.testing.assert_allclose(flow, flow.T, atol=1e-12)                # detailed balance
    np.testing.assert_allclose(pi @ k, pi, atol=1e-12)                  # stationarity
    tiny = np.full(9, (1 - 1e-12) / 8)
    tiny[3] = 1e-12
    assert np.isfinite(kernel(p, mu, tiny, 50.0)).all()                 # log space


def test_measure_is_the_visit_frequency_with_a_equal_one():
    g = lollipop()
    p, mu = base_chain(g)
    rng = np.random.default_rng(1)
    x0 = np.full((1, 9), 1 / 9)
    pos, x = np.array([0]), x0.copy()
    counts = np.zeros(9)
    for n in range(500):
        pos, x = walk_step(p, mu, pos, x, 4.0, 1.0 / (n + 2), rng.random(1))
        counts[pos[0]] += 1
        assert (x > 0).all() and abs(x.sum() - 1) < 1e-12
    np.testing.assert_allclose(x[0], (x0[0] + counts) / 501, atol=1e-12)


def visit_error(alpha, runs=60, steps=6000, seed=0):
    g = lollipop()
    p, mu = base_chain(g)
    rng = np.random.default_rng(seed)
    pos, x = np.zeros(runs, dtype=np.int64), np.full((runs, 9), 1 / 9)
    counts = np.zeros((runs, 9))
    for n in range(steps):
        pos, x = walk_step(p, mu, pos, x, alpha, 1.0 / (n + 2), rng.random(runs))
        counts[np.arange(runs), pos] += 1
    err = ((counts / steps - mu) ** 2).sum(1)
    return err.mean(), err.std(ddof=1) / np.sqrt(runs), counts.sum(0) / (runs * steps), mu


def test_alpha_zero_is_the_base_chain_and_repellence_lowers_the_variance():
    e0, se0, freq, mu = visit_error(0.0)
    np.testing.assert_allclose(freq, mu, atol=0.01)                    # stationary law μ
    e5, se5, freq5, _ = visit_error(5.0)
    np.testing.assert_allclose(freq5, mu, atol=0.01)                   # same target
    assert e5 + 4 * np.hypot(se0, se5) < e0, (e0, e5)


def test_token_sgd_converges_and_reports_hops():
    quad = Quadratic(n=9, d=3, l2=0.1, seed=2)
    xs, f_star = quad.optimum()
    alg = bind(SRRW(lollipop(), 1e9, alpha=2.0, lr=1.0, a=0.6, b=0.9, seed=3), quad)
    nodes = alg.init_nodes(torch.zeros(9, 3, dtype=torch.float64))
    d0 = float(xs.pow(2).sum())
    for t in range(300):
        visited, comms = alg.advance(nodes, None, float(t), float(t + 1))
        assert len(visited) == 9 and comms == 9
    assert int(nodes["step"]) == 2700
    assert float((nodes["theta"] - xs).pow(2).sum()) < 0.02 * d0
    m = nodes["measure"].numpy()
    assert abs(m.sum() - 1) < 1e-12 and (m > 0).all()
