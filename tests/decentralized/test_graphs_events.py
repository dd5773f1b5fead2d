"""Graphs, spectral constants and the Poisson event stream against closed forms
(decentralized.md §0 and §4 oracles 1, 2, 8)."""
import math

import numpy as np
import pytest

from fedopt.decentralized import graphs as G
from fedopt.decentralized.events import COMMUNICATION, GRADIENT, EventStream
from fedopt.schema import ConfigError


def lu(g):
    return G.laplacian(g) / g.num_edges


@pytest.mark.parametrize("n", [3, 7, 12])
def test_complete_constants(n):
    g = G.complete(n)
    assert g.num_edges == n * (n - 1) // 2
    ev = np.linalg.eigvalsh(G.laplacian(g))          # spectrum {0, n (n−1 times)}
    np.testing.assert_allclose(ev, [0] + [n] * (n - 1), atol=1e-10)
    assert G.chi1(lu(g)) == pytest.approx((n - 1) / 2, rel=1e-9)
    assert G.chi2(lu(g), g.edges) == pytest.approx((n - 1) / 2, rel=1e-9)
    assert G.dadao_rate(g) == pytest.approx((n - 1) / math.sqrt(2), rel=1e-9)


@pytest.mark.parametrize("n", [3, 8, 13])
def test_ring_constants(n):
    g = G.ring(n)
    ev = np.sort(np.linalg.eigvalsh(G.laplacian(g)))
    closed = np.sort(2 - 2 * np.cos(2 * np.pi * np.arange(n) / n))   # circulant spectrum
    np.testing.assert_allclose(ev, closed, atol=1e-10)
    assert G.chi1(lu(g)) == pytest.approx(n / (2 * (1 - math.cos(2 * math.pi / n))), rel=1e-9)
    assert G.chi2(lu(g), g.edges) == pytest.approx((n - 1) / 2, rel=1e-9)


@pytest.mark.parametrize("n", [4, 9, 300])
def test_star_constants(n):
    g = G.star(n)
    assert g.num_edges == n - 1 and g.degrees()[0] == n - 1
    assert G.chi1(lu(g)) == pytest.approx(n - 1, rel=1e-9)
    assert G.chi2(lu(g), g.edges) == pytest.approx((n - 1) / 2, rel=1e-9)
    assert G.dadao_rate(g) == pytest.approx(n - 1, rel=1e-9)   # notebook: 299 for n = 300


def test_grid_and_torus_spectra():
    # products of paths / cycles: eigenvalues are sums of the factors' eigenvalues
    r, c = 3, 5
    path = lambda m: 2 - 2 * np.cos(np.pi * np.arange(m) / m)
    cyc = lambda m: 2 - 2 * np.cos(2 * np.pi * np.arange(m) / m)
    gg, gt = G.grid(r, c), G.torus(r, c)
    assert gg.num_edges == r * (c - 1) + c * (r - 1) and gt.num_edges == 2 * r * c
    np.testing.assert_allclose(np.linalg.eigvalsh(G.laplacian(gg)),
                               np.sort(np.add.outer(path(r), path(c)).ravel()), atol=1e-10)
    np.testing.assert_allclose(np.linalg.eigvalsh(G.laplacian(gt)),
                               np.sort(np.add.outer(cyc(r), cyc(c)).ravel()), atol=1e-10)


def test_random_graphs_keyed_and_chi_facts():
    a, b = G.erdos_renyi(30, 0.3, seed=4), G.erdos_renyi(30, 0.3, seed=4)
    assert np.array_equal(a.edges, b.edges)
    assert not np.array_equal(a.edges, G.erdos_renyi(30, 0.3, seed=5).edges)
    (g, pts), (g2, _) = G.geometric(40, 0.35, seed=1), G.geometric(40, 0.35, seed=1)
    assert np.array_equal(g.edges, g2.edges)
    d = np.linalg.norm(pts[g.edges[:, 0]] - pts[g.edges[:, 1]], axis=1)
    assert (d <= 0.35).all()
    for graph in (a, g):
        G.check_connected(graph)
        q = lu(graph)
        c1, c2 = G.chi1(q), G.chi2(q, graph.edges)
        assert c2 <= c1 + 1e-12                                      # χ₂ ≤ χ₁
        assert G.chi1(3 * q) == pytest.approx(c1 / 3, rel=1e-9)      # scaling divides both
        assert G.chi2(3 * q, graph.edges) == pytest.approx(c2 / 3, rel=1e-9)
        lam = G.dadao_rate(graph)                                    # 2 χ₁(Λ) χ₂(Λ) = 1
        assert 2 * G.chi1(lam * q) * G.chi2(lam * q, graph.edges) == pytest.approx(1, rel=1e-9)


def test_disconnected_refused_naming_topology():
    g = G.from_edges(5, [[0, 1], [1, 2], [3, 4]])
    assert G.components(g) == 2
    with pytest.raises(ConfigError, match=r"^topology: .*disconnected \(2 components\)"):
        G.check_connected(g)
    with pytest.raises(ConfigError, match=r"^topology.edges: self-loop"):
        G.from_edges(3, [[1, 1]])
    with pytest.raises(ConfigError, match=r"^topology.edges: edge endpoint"):
        G.from_edges(3, [[0, 3]])
    assert np.array_equal(G.from_edges(3, [[2, 0], [0, 2], [1, 0]]).edges, [[0, 1], [0, 2]])


def test_metropolis_doubly_stochastic():
    g = G.erdos_renyi(20, 0.3, seed=2)
    w = G.metropolis_weights(g)
    np.testing.assert_allclose(w.sum(0), 1, atol=1e-12)
    np.testing.assert_allclose(w, w.T)
    assert (w >= 0).all() and (w[G.laplacian(g) == 0] == 0).all()


def test_event_stream_frequencies_and_keying():
    g = G.ring(6)
    rates = np.linspace(0.5, 2.0, g.num_edges)
    s = EventStream(np.ones(6), g.edges, rates, seed=3)
    T = 2000.0
    ev = s.until(T)
    assert (np.diff(ev.time) >= 0).all() and ev.time[-1] <= T
    # per-node gradient and per-edge communication counts: chi-square against rate · T
    counts = np.concatenate([np.bincount(ev.a[ev.kind == GRADIENT], minlength=6),
                             np.bincount(ev.edge[ev.kind == COMMUNICATION], minlength=6)])
    expected = np.concatenate([np.ones(6), rates]) * T
    chi2 = float((((counts - expected) ** 2) / expected).sum())
    assert chi2 < 32.9            # 99.9 % quantile of χ²(11)
    assert len(ev) == pytest.approx(s.total * T, rel=0.03)
    # endpoints of a communication are its edge's
    c = ev.kind == COMMUNICATION
    assert np.array_equal(np.stack([ev.a[c], ev.b[c]], 1), g.edges[ev.edge[c]])
    # any split of the horizon gives the same events bit for bit; another seed others
    s2 = EventStream(np.ones(6), g.edges, rates, seed=3)
    parts = [s2.until(t) for t in (0.7, 13.0, 13.0, 999.5, T)]
    assert np.array_equal(np.concatenate([p.time for p in parts]), ev.time)
    assert np.array_equal(np.concatenate([p.edge for p in parts]), ev.edge)
    s3 = EventStream(np.ones(6), g.edges, rates, seed=3)
    s3.seek(*s2.position)
    assert s3.until(T + 5).time[0] > T
    assert not np.array_equal(EventStream(np.ones(6), g.edges, rates, seed=4).until(50).time,
                              ev.time[:len(EventStream(np.ones(6), g.edges, rates, 4).until(50))])


def test_topology_section_builds_each_graph(tmp_path):
    from fedopt.decentralized.topology import build_topology

    path = tmp_path / "g.txt"
    path.write_text("# a path\n0 1\n1 2  # middle\n2 3\n")
    assert np.array_equal(build_topology({"name": "edges", "file": str(path)}, 4, 0).edges,
                          [[0, 1], [1, 2], [2, 3]])
    path.write_text("0 1 2\n")
    with pytest.raises(ConfigError, match=r"^topology.file: .*two node ids"):
        build_topology({"name": "edges", "file": str(path)}, 4, 0)
    with pytest.raises(ConfigError, match=r"^topology.edges: give exactly one"):
        build_topology({"name": "edges"}, 4, 0)
    assert build_topology({"name": "grid", "rows": None, "cols": None}, 12, 0).num_edges == 17
    assert build_topology({"name": "star"}, 5, 0).num_edges == 4
    g1 = build_topology({"name": "geometric", "radius": 0.7, "seed": 3}, 10, 0)
    g2 = build_topology({"name": "geometric", "radius": 0.7, "seed": None}, 10, 3)
    assert np.array_equal(g1.edges, g2.edges)   # topology.seed null: the run's seed
