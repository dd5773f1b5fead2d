"""Randomized gossip and D-SGD against decentralized.md §4 oracles 13–15: exact average,
invariance, spectral-gap rates, and D-SGD with W = 11ᵀ/n equal to centralized gradient descent."""
import math

import numpy as np
import pytest
import torch

from fedopt.decentralized import graphs as G
from fedopt.decentralized.gossip import DSGD, Gossip
from tests.decentralized.quadratic import Quadratic, bind


def starts(n, d, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def averaging_time(graph, eps=1e-6, seed=0):
    """Ticks (edge activations) until (1/n)Σ‖x_i − x̄‖² ≤ eps · its start value."""
    alg = bind(Gossip(graph, 1e9, lr=0.0, grad_rate=0.0, seed=seed), Quadratic(n=graph.n))
    x0 = starts(graph.n, 3, seed)
    nodes = {"x": x0.clone()}
    avg = x0.mean(0)
    err0 = float((x0 - avg).pow(2).sum(1).mean())
    stream = alg._stream()
    ticks, t = 0, 0.0
    while True:
        ev = stream.until(t + 1.0)
        for k in range(len(ev)):      # one tick at a time, average checked at every tick
            alg.apply(nodes, ev.time[k:k + 1], ev.kind[k:k + 1], ev.a[k:k + 1], ev.b[k:k + 1])
            ticks += 1
            assert (nodes["x"].mean(0) - avg).abs().max() < 1e-12
            if float((nodes["x"] - avg).pow(2).sum(1).mean()) <= eps * err0:
                return ticks, nodes["x"], avg
        t += 1.0


def spectral_ticks(graph, eps=1e-6):
    # E[W_k] = I − (1/(2·λ_total)) Σ λ_ij (e_i − e_j)(e_i − e_j)ᵀ for a tick of the gossip clocks
    rates = np.asarray([1.0 / d for d in graph.degrees()])
    lam = rates[graph.edges[:, 0]] + rates[graph.edges[:, 1]]
    ew = np.eye(graph.n) - G.laplacian(graph, lam) / (2 * lam.sum())
    gap = 1 - np.sort(np.linalg.eigvalsh(ew))[-2]
    return math.log(1 / eps) / gap


@pytest.mark.parametrize("graph", [G.ring(12), G.complete(12)], ids=["ring", "complete"])
def test_gossip_reaches_exact_average_at_spectral_rate(graph):
    ticks, x, avg = averaging_time(graph)
    torch.testing.assert_close(x, avg.expand_as(x), rtol=0, atol=1e-2)
    bound = spectral_ticks(graph)
    assert bound / 4 <= ticks <= 2 * bound, (ticks, bound)


def test_ring_much_slower_than_complete():
    assert averaging_time(G.ring(12))[0] > 4 * averaging_time(G.complete(12))[0]


def test_gossip_gradient_event_touches_one_node():
    quad = Quadratic(n=5, l2=0.1)
    alg = bind(Gossip(G.ring(5), 1e9, lr=0.3), quad)
    x0 = starts(5, quad.d)
    nodes = {"x": x0.clone()}
    alg.apply(nodes, np.array([0.1]), np.array([0]), np.array([3]), np.array([-1]))
    expect = x0.clone()
    expect[3] -= 0.3 * quad.grads(x0[3:4], [3])[0]
    torch.testing.assert_close(nodes["x"], expect, rtol=0, atol=0)


def test_dsgd_complete_graph_equals_centralized_gd():
    quad = Quadratic(n=6, l2=0.05)
    alg = bind(DSGD(G.complete(6), 1e9, lr=0.2, form="adapt_then_combine"), quad)
    np.testing.assert_allclose(alg.w_np, np.full((6, 6), 1 / 6), atol=1e-15)  # W = 11ᵀ/n
    x0 = starts(6, quad.d)
    nodes = {"x": x0.clone()}
    alg.advance(nodes, None, 0.0, 1.0)     # one round: every row is the average of local steps
    xbar = (x0 - 0.2 * quad.grads(x0, np.arange(6))).mean(0)
    torch.testing.assert_close(nodes["x"], xbar.expand(6, -1), rtol=1e-12, atol=1e-12)
    for k in range(1, 20):
        alg.advance(nodes, None, float(k), float(k + 1))
        # centralized GD on f = (1/n) Σ f_i from the average iterate
        xbar = xbar - 0.2 * quad.grads(xbar.expand(6, -1), np.arange(6)).mean(0)
        torch.testing.assert_close(nodes["x"], xbar.expand(6, -1), rtol=1e-12, atol=1e-12)
    xs, _ = quad.optimum()
    for _ in range(300):
        alg.advance(nodes, None, 0.0, 1.0)
    torch.testing.assert_close(nodes["x"][0], xs, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("mixing", ["metropolis", "laplacian"])
def test_dsgd_mixing_contracts_at_spectral_rate(mixing):
    g = G.erdos_renyi(15, 0.3, seed=3)
    alg = bind(DSGD(g, 1e9, lr=0.0, mixing=mixing), Quadratic(n=15))
    ev = np.sort(np.linalg.eigvalsh(alg.w_np))
    rho = max(abs(ev[-2]), abs(ev[0]))
    x0 = starts(15, 4)
    nodes = {"x": x0.clone()}
    prev = float((x0 - x0.mean(0)).norm())
    for k in range(10):
        grads, comms = alg.advance(nodes, None, float(k), float(k + 1))
        assert comms == g.num_edges and len(grads) == 15
        torch.testing.assert_close(nodes["x"].mean(0), x0.mean(0), rtol=0, atol=1e-13)
        err = float((nodes["x"] - nodes["x"].mean(0)).norm())
        assert err <= rho * prev * (1 + 1e-9)
        prev = err


def test_dsgd_combine_then_adapt_rows_differ_by_local_step():
    quad = Quadratic(n=6, l2=0.05)
    alg = bind(DSGD(G.complete(6), 1e9, lr=0.2), quad)
    x0 = starts(6, quad.d)
    nodes = {"x": x0.clone()}
    alg.advance(nodes, None, 0.0, 1.0)
    expect = x0.mean(0) - 0.2 * quad.grads(x0, np.arange(6))
    torch.testing.assert_close(nodes["x"], expect, rtol=1e-12, atol=1e-12)


def adom_distance(graph, quad, multi_consensus, rounds=300):
    from fedopt.decentralized.adom import AdomPlus

    alg = bind(AdomPlus(graph, 1e9, multi_consensus=multi_consensus), quad)
    nodes = alg.init_nodes(torch.zeros(quad.n, quad.d, dtype=torch.float64))
    xs, _ = quad.optimum()
    out = []
    for r in range(rounds):
        grads, comms = alg.advance(nodes, None, float(r), float(r + 1))
        assert len(grads) == quad.n and comms == alg.q * graph.num_edges
        out.append(float((nodes["x"] - xs).pow(2).sum(1).mean()))
    return np.array(out) / float(xs.pow(2).sum()), alg


def test_adom_plus_converges_linearly_and_multi_consensus_helps_on_the_star():
    quad = Quadratic(n=10, d=4, l2=0.0, seed=3)
    d, _ = adom_distance(G.complete(10), quad, False)
    assert d[-1] < 1e-5 and d[199] < 1e-3 * d[0] * 10           # linear, no floor
    mc, alg = adom_distance(G.star(10), quad, True)
    assert alg.q == math.ceil(10 * math.log(2))                  # χ = λ_max/λ₂ = n on the star
    plain, _ = adom_distance(G.star(10), quad, False)
    assert mc[-1] < 1e-3 and plain[-1] > 10 * mc[-1]             # spec oracle 16, qualitatively
