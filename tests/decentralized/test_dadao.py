"""DADAO mechanics and convergence against decentralized.md §4 oracles 4–7, 9, 11: ODE semigroup,
conservation of Σz and Σz̃, the fixed point at x*, locality of events, batched == sequential,
linear convergence with a slope scaling like √(μ/L), and the refused low rate."""
import math

import numpy as np
import pytest
import torch

from fedopt.decentralized import graphs as G
from fedopt.decentralized.dadao import X, XT, Y, YT, Z, ZT, Dadao, propagate
from fedopt.schema import ConfigError
from tests.decentralized.quadratic import Quadratic, bind


def make(graph, quad, **kw):
    return bind(Dadao(graph, 1e9, seed=kw.pop("seed", 0), **kw), quad)


def random_state(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, 6, d, generator=g, dtype=torch.float64)
    s[:, Z] -= s[:, Z].mean(0)          # Σ z = Σ z̃ = 0
    s[:, ZT] -= s[:, ZT].mean(0)
    return {"s": s, "t": torch.zeros(n, dtype=torch.float64)}


@pytest.mark.parametrize("spread", [1.0, 10.0])
def test_ode_semigroup_and_identity(spread):
    quad = Quadratic(l2=0.01, spread=spread)
    alg = make(G.ring(8), quad)
    s = random_state(3, 4)["s"]
    a, b = torch.tensor([0.3, 1.7, 5.0], dtype=torch.float64), torch.tensor([2.2, 0.01, 9.0],
                                                                           dtype=torch.float64)
    two = propagate(propagate(s, a, alg.m), b, alg.m)
    one = propagate(s, a + b, alg.m)
    torch.testing.assert_close(two, one, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(propagate(s, torch.zeros(3, dtype=torch.float64), alg.m), s,
                               rtol=0, atol=0)
    # the ODE's right-hand side: d/dt at 0 equals M S (finite difference)
    h = 1e-6
    fd = (propagate(s, torch.full((3,), h, dtype=torch.float64), alg.m) - s) / h
    c = alg.c
    rhs = torch.stack([c["eta"] * (s[:, XT] - s[:, X]), c["eta"] * (s[:, X] - s[:, XT]),
                       c["alpha"] * (s[:, YT] - s[:, Y]),
                       -c["theta"] * (c["nu"] * s[:, XT] + s[:, Y] + s[:, Z]),
                       c["alpha"] * (s[:, ZT] - s[:, Z]), c["alpha_t"] * (s[:, Z] - s[:, ZT])], 1)
    torch.testing.assert_close(fd, rhs, rtol=1e-4, atol=1e-4)


def test_constants_follow_the_spec():
    quad = Quadratic(l2=0.05)
    g = G.complete(6)
    alg = make(g, quad)
    nu, L = quad.mu / 2, quad.L
    r = math.sqrt(nu / L)
    lam = G.dadao_rate(g)                                 # (n − 1)/√2 on K_n
    assert lam == pytest.approx(5 / math.sqrt(2))
    chi1_lam = ((6 - 1) / 2) / lam                        # χ₁(L_u)/λ_total
    expect = {"eta": r / 8, "alpha": r / 4, "alpha_t": r / 8, "theta": 1 / (2 * r),
              "gamma": 1 / (4 * L), "gamma_t": 1 / (4 * math.sqrt(L * nu)), "delta": r / 4,
              "delta_t": 1.0, "beta": 0.5, "beta_t": 2 * chi1_lam / r, "nu": nu}
    for k, v in expect.items():
        assert alg.c[k] == pytest.approx(v, rel=1e-9), k


def run_events(alg, nodes, t_end, batch):
    alg.batch_events = batch
    alg.stream = None
    stream = alg._stream()
    ev = stream.until(t_end)
    alg.advance(nodes, ev, 0.0, t_end)
    return ev


def test_conservation_and_batched_equals_sequential():
    quad = Quadratic(l2=0.02)
    alg = make(G.geometric(8, 0.6, seed=1)[0], quad, seed=5)
    a, b = random_state(8, quad.d), random_state(8, quad.d)
    ev = run_events(alg, a, 40.0, batch=True)
    run_events(alg, b, 40.0, batch=False)
    assert len(ev) > 500
    torch.testing.assert_close(a["s"], b["s"], rtol=1e-10, atol=1e-10)
    # the plain reference: one event at a time, each propagator computed on its own
    c = random_state(8, quad.d)
    for k in range(len(ev)):
        alg.apply(c, ev.time[k:k + 1], ev.kind[k:k + 1], ev.a[k:k + 1], ev.b[k:k + 1])
    alg.finish(c, 40.0)
    torch.testing.assert_close(a["s"], c["s"], rtol=1e-10, atol=1e-10)
    for k in (Z, ZT):
        assert a["s"][:, k].sum(0).abs().max() < 1e-11


def test_fixed_point_at_optimum():
    quad = Quadratic(l2=0.02)
    alg = make(G.star(8), quad, seed=2)
    xs, _ = quad.optimum()
    n = 8
    x = xs.expand(n, -1)
    nu = alg.c["nu"]
    y = quad.grads(x.clone(), np.arange(n)) - nu * x
    z = -nu * x - y
    s = torch.stack([x, x, y, y, z, z], 1).clone()
    assert z.sum(0).abs().max() < 1e-12          # consistent: Σ ∇f_i(x*) = 0
    nodes = {"s": s.clone(), "t": torch.zeros(n, dtype=torch.float64)}
    run_events(alg, nodes, 30.0, batch=True)
    torch.testing.assert_close(nodes["s"], s, rtol=0, atol=1e-11)


def test_event_locality():
    quad = Quadratic(l2=0.02)
    alg = make(G.ring(6), quad)
    nodes = random_state(6, quad.d)
    before = nodes["s"].clone()
    alg.apply(nodes, np.array([0.5]), np.array([0]), np.array([2]), np.array([-1]))
    changed = (nodes["s"] != before).flatten(1).any(1)
    assert changed.tolist() == [False, False, True, False, False, False]
    before = nodes["s"].clone()
    alg.apply(nodes, np.array([0.8]), np.array([1]), np.array([3]), np.array([4]))
    changed = (nodes["s"] != before).flatten(1).any(1)
    assert changed.tolist() == [False, False, False, True, True, False]
    # the communication's z, z̃ jumps are equal and opposite (after the same propagation)
    moved = propagate(before[[3, 4]], torch.tensor([0.8, 0.8], dtype=torch.float64), alg.m)
    jump = nodes["s"][[3, 4]] - moved
    for k in (Z, ZT):
        torch.testing.assert_close(jump[0, k], -jump[1, k], rtol=1e-12, atol=1e-12)
    for k in (X, XT, Y, YT):
        assert jump[:, k].abs().max() < 1e-12


def test_swapping_edge_endpoints_changes_nothing():
    quad = Quadratic(l2=0.02)
    alg = make(G.ring(6), quad)
    a, b = random_state(6, quad.d), random_state(6, quad.d)
    alg.apply(a, np.array([0.8]), np.array([1]), np.array([3]), np.array([4]))
    alg.apply(b, np.array([0.8]), np.array([1]), np.array([4]), np.array([3]))
    torch.testing.assert_close(a["s"], b["s"], rtol=0, atol=1e-14)


def log_distance_slope(alg, quad, horizon):
    """(times, (1/n) Σ‖x_i − x*‖² after each time unit, the same at time 0) from x_i = 0."""
    xs, _ = quad.optimum()
    nodes = alg.init_nodes(torch.zeros(quad.n, quad.d, dtype=torch.float64))
    alg.stream = None
    dist, times = [], []
    t = 0.0
    stream = alg._stream()
    while t < horizon:
        t1 = t + 1.0
        alg.advance(nodes, stream.until(t1), t, t1)
        t = t1
        x = alg.models(nodes)
        dist.append(float((x - xs).pow(2).sum(1).mean()))
        times.append(t)
    return np.array(times), np.array(dist), float(xs.pow(2).sum())


@pytest.mark.parametrize("graph", [G.complete(10), G.ring(10), G.star(10)],
                         ids=["complete", "ring", "star"])
def test_linear_convergence_rate(graph):
    quad = Quadratic(n=10, d=4, l2=0.0, seed=3)
    alg = make(graph, quad)
    rate = math.sqrt(quad.mu / (2 * quad.L))
    horizon = 100 / rate
    t, d, d0 = log_distance_slope(alg, quad, horizon)
    assert d[-1] < 1e-8 * d0                                    # no floor down to 1e-8
    tail = t > horizon / 3
    slope = np.polyfit(t[tail], np.log(d[tail]), 1)[0]
    assert -0.5 * rate <= slope <= -0.1 * rate, slope / rate   # spec: about −0.2


def test_slope_scales_like_sqrt_kappa():
    # κ about 100x larger (μ smaller through the spectrum of A): slope about 10x smaller
    slopes = []
    for spread in (3.0, 30.0):
        quad = Quadratic(n=6, d=3, l2=0.0, spread=spread, seed=1)
        alg = make(G.complete(6), quad)
        rate = math.sqrt(quad.mu / (2 * quad.L))
        t, d, _ = log_distance_slope(alg, quad, 25 / rate)
        tail = t > 8 / rate
        slopes.append((np.polyfit(t[tail], np.log(d[tail]), 1)[0], quad.L / quad.mu))
    (s1, k1), (s2, k2) = slopes
    assert 50 < k2 / k1 < 200, k2 / k1
    ratio = (s1 / s2) / math.sqrt((k2 / k1) / 100)     # normalised to a 100x κ
    assert 5 <= ratio <= 20, ratio


def test_rate_below_theory_refused():
    g = G.ring(8)
    need = G.dadao_rate(g)
    with pytest.raises(ConfigError, match=r"^algorithm.comm_rate: .*below the communication"):
        Dadao(g, 10.0, comm_rate=0.25 * need, L=1.0, mu=0.1)
    Dadao(g, 10.0, comm_rate=2 * need, L=1.0, mu=0.1)   # above: accepted
    with pytest.raises(ConfigError, match=r"^model.l2: DADAO needs a strongly convex"):
        bind(Dadao(g, 10.0), Quadratic(n=8, d=6, m=3))   # m < d, no l2: μ = 0


def test_rate_below_theory_diverges():
    # §1.8 [sim]: a quarter of the rate, β̃ from the matching χ₁(Λ), blows up (why it is refused)
    quad = Quadratic(n=10, l2=0.05, seed=4)
    g = G.complete(10)
    alg = make(g, quad)
    low = make(g, quad)
    low.comm_rate = alg.comm_rate / 4
    low.edge_rates = alg.edge_rates / 4
    low.chi1_lam = 4 * alg.chi1_lam
    low._set_constants(quad.L, quad.mu)
    _, ok, _ = log_distance_slope(alg, quad, 150)
    _, bad, _ = log_distance_slope(low, quad, 150)
    assert ok[-1] < 1e-3 * ok[0]
    assert not (bad[-1] < 1e3 * bad[0])
