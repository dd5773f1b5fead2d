"""Sequential gradient coding and the (B, W, λ)-bursty model against the spec's oracles
(gradient_coding.md §5, items 10–14): load formulas at n = 256, the deadline guarantee on
conforming patterns, gradient assembly with real tensors, the runtime simulator's sanity cases."""
import math

import numpy as np
import pytest

from fedopt.coding import cyclic, frc
from fedopt.coding.bursty import conforms, generate, round_ok
from fedopt.coding.sgc import (D1, D2, GC, MSGC, SRSGC, gc_load, m_sgc_load, m_sgc_unit,
                               simulate_runtime, sr_sgc_stragglers)

PARAMS = [(1, 2, 3), (1, 3, 5), (2, 3, 4), (2, 5, 6), (3, 4, 8), (1, 2, 19)]


def test_load_formulas_at_n256():
    n = 256
    assert gc_load(n, 15) == 0.0625
    assert sr_sgc_stragglers(2, 3, 23) == 12
    assert SRSGC(n, 2, 3, 23, jobs=1).load == 0.05078125
    assert m_sgc_load(n, 1, 2, 27) == pytest.approx(0.0075431, abs=5e-8)
    assert m_sgc_load(n, 1, 2, 27) == pytest.approx(2 * 28 / (256 * 29), rel=1e-15)
    for B, W in [(1, 2), (2, 5), (3, 4)]:
        assert m_sgc_load(n, B, W, n) == pytest.approx((W - 1 + B) / (n * (W - 1)), rel=1e-15)
    # mini-task sizes add up to one job: |D1| + |D2| = n(W−1)u + nBu/(λ+1) = 1
    for B, W, lam in PARAMS:
        u = m_sgc_unit(20, B, W, lam)
        assert 20 * (W - 1) * u + 20 * B * u / (lam + 1) == pytest.approx(1.0, rel=1e-14)


def test_bursty_conformity_readings():
    S = np.zeros((3, 8), dtype=bool)
    S[0, [0, 2]] = True                    # two short bursts within B = 3 rounds, W = 5
    assert conforms(S, 3, 5, 1)            # the authors' code admits it
    assert not conforms(S, 3, 5, 1, strict=True)   # the paper's "one burst" does not
    S2 = np.zeros((3, 8), dtype=bool)
    S2[0, [0, 3]] = True                   # round 3 straggle after one at 0, inside [3−4, 3−3]
    assert not conforms(S2, 3, 5, 1)
    S3 = np.zeros((3, 4), dtype=bool)
    S3[[0, 1], 1] = True                   # two distinct stragglers in a window, λ = 1
    assert not conforms(S3, 1, 2, 1) and conforms(S3, 1, 2, 2)
    a, b = generate(10, 40, 2, 5, 3, seed=4), generate(10, 40, 2, 5, 3, seed=4)
    assert np.array_equal(a, b) and a.sum() > 10
    assert conforms(a, 2, 5, 3) and conforms(generate(10, 40, 2, 5, 3, seed=4, strict=True),
                                             2, 5, 3, strict=True)


@pytest.mark.parametrize("B,W,lam", PARAMS)
def test_deadline_guarantee_on_conforming_patterns(B, W, lam):
    n, J = 20, 30
    events = 0
    for seed in range(8):
        S = generate(n, J + W + B, B, W, lam, seed=seed, p_start=0.1)
        assert conforms(S, B, W, lam)
        events += int(S.sum())
        schemes = [MSGC(n, B, W, lam, J)] + ([SRSGC(n, B, W, lam, J)] if (W - 1) % B == 0 else [])
        for sch in schemes:
            st = sch.init_state()
            for r in range(sch.rounds):
                st, _, missed = sch.observe(st, r, ~S[:, r])
                assert not missed, (sch.name, seed, r)
            assert np.all(st["decoded_at"] >= 0)
            assert np.all(st["decoded_at"] <= np.arange(J) + sch.T)
    assert events > 50                     # the patterns do straggle


def test_violating_pattern_is_reported_never_decoded_wrongly():
    n, J, B, W, lam = 10, 6, 1, 2, 2
    sch = MSGC(n, B, W, lam, J)
    st = sch.init_state()
    arrived = np.ones(n, bool)
    arrived[:3] = False                    # 3 > λ stragglers in round 0 and again in round 1
    st, _, missed = sch.observe(st, 0, arrived)
    st, _, missed = sch.observe(st, 1, arrived)
    assert missed == [0] and st["decoded_at"][0] == -1
    # the simulator waits for everybody instead (a "feasible" master) and never misses
    delay = np.ones((n, sch.rounds))
    delay[:3] = 10.0
    rt = simulate_runtime(sch, delay, c_comp=1.0, mu=1.0)
    assert rt.waited.any() and np.all(rt.decoded_at >= 0)


def test_gradients_assembled_through_sgc_equal_the_full_gradient():
    """Real vectors: M-SGC (D1 chunks + GC-decoded D2 groups) and SR-SGC (GC-decoded job
    tasks) give each job's full gradient under a conforming bursty pattern (float64)."""
    n, J, B, W, lam, d = 12, 10, 1, 3, 3, 4
    rng = np.random.default_rng(0)
    code = frc(n, lam)                    # (λ + 1) | n
    S = generate(n, J + W + B, B, W, lam, seed=1, p_start=0.15)
    assert S.sum() > 5
    g1 = rng.standard_normal((J, n, W - 1, d))            # D1 chunk gradients
    g2 = rng.standard_normal((J, B, n, d))                # D2 sub-partition gradients
    full = g1.sum((1, 2)) + g2.sum((1, 2))
    sch = MSGC(n, B, W, lam, J, can_decode=code.can_decode)
    st = sch.init_state()
    got_d1 = np.zeros((J, d))
    coded = np.zeros((J, B, n, d))
    for r in range(sch.rounds):
        job, kind, index = sch.tasks(st, r)
        for i in np.flatnonzero(~S[:, r]):
            for k in range(job.shape[1]):
                j = job[i, k]
                if kind[i, k] == D1:
                    got_d1[j] += g1[j, i, index[i, k]]
                elif kind[i, k] == D2:
                    coded[j, index[i, k], i] = code.B[i] @ g2[j, index[i, k]]
        st, _, missed = sch.observe(st, r, ~S[:, r])
        assert not missed
    for j in range(J):
        dec = sum(code.decode(st["d2"][j, b]) @ coded[j, b] for b in range(B))
        np.testing.assert_allclose(got_d1[j] + dec, full[j], rtol=1e-12, atol=1e-12)

    B_, W_, lam_ = 2, 3, 6
    sr = SRSGC(n, B_, W_, lam_, J)
    c = cyclic(n, sr.s, seed=0)
    sr.can_decode = c.can_decode
    S = generate(n, J + B_, B_, W_, lam_, seed=2, p_start=0.15)
    G = rng.standard_normal((J, n, d))
    st, f = sr.init_state(), np.zeros((J, n, d))
    for r in range(sr.rounds):
        job = sr.tasks(st, r)
        for i in np.flatnonzero(~S[:, r] & (job >= 0)):
            f[job[i], i] = c.B[i] @ G[job[i]]
        st, _, missed = sr.observe(st, r, ~S[:, r])
        assert not missed
    for j in range(J):
        np.testing.assert_allclose(c.decode(st["received"][j]) @ f[j], G[j].sum(0), rtol=1e-9)


def test_runtime_sanity_without_stragglers():
    n, J, c = 16, 12, 3.0
    delay = np.zeros((n, 40))
    for sch in [GC(n, 0, J), GC(n, 3, J), SRSGC(n, 2, 5, 4, J), MSGC(n, 1, 3, 4, J)]:
        rt = simulate_runtime(sch, delay, c_comp=c, mu=1.0)
        per_round = sch.load * c
        rounds = J + (sch.T if isinstance(sch, MSGC) else 0)
        assert rt.total == pytest.approx(rounds * per_round, rel=1e-12), sch.name
        assert not rt.waited.any() and np.all(rt.decoded_at >= 0)


def test_uncoded_runtime_is_sum_of_round_maxima_and_mu_inf_never_straggles():
    rng = np.random.default_rng(0)
    n, J = 8, 10
    delay = rng.exponential(1.0, (n, J))
    rt = simulate_runtime(GC(n, 0, J), delay, c_comp=2.0, mu=1.0)
    assert rt.total == pytest.approx((delay + 2.0 / n).max(0).sum(), rel=1e-12)
    for sch in [GC(n, 2, J), SRSGC(n, 1, 2, 3, J), MSGC(n, 1, 2, 3, J)]:
        rt = simulate_runtime(sch, np.pad(delay, ((0, 0), (0, 5))), c_comp=2.0, mu=math.inf)
        assert not rt.stragglers.any()


def test_conform_admission_matches_feasible_on_conforming_delays():
    """Delays whose declared stragglers conform to (B, W, λ): the authors' admission never waits
    and neither does the feasibility master; both decode every job."""
    n, J, B, W, lam = 20, 25, 1, 2, 3
    S = generate(n, J + W + B, B, W, lam, seed=3, p_start=0.1)
    delay = np.where(S, 5.0, 1.0)
    for sch in [SRSGC(n, B, W, lam, J), MSGC(n, B, W, lam, J)]:
        for adm in ("feasible", "conform"):
            rt = simulate_runtime(sch, delay, c_comp=0.0, mu=1.0, admission=adm, B=B, W=W,
                                  lam=lam)
            assert not rt.waited.any() and np.all(rt.decoded_at >= 0), (sch.name, adm)


@pytest.mark.parametrize("kind,B,W,lam", [("sr", 2, 3, 4), ("m", 1, 3, 3), ("m", 2, 3, 3),
                                          ("m", 1, 2, 12)])
def test_training_t_plus_one_models_equals_full_gradient_descent(kind, B, W, lam):
    """T + 1 least-squares models trained concurrently through SR-SGC / M-SGC under a bursty
    pattern follow exactly the trajectories of full-gradient descent (float64)."""
    from fedopt.coding.sgc_train import pieces, train_sequential

    n, J, d, eta = 12, 14, 3, 1e-3
    sch = SRSGC(n, B, W, lam, J) if kind == "sr" else MSGC(n, B, W, lam, J)
    code = cyclic(n, sch.s, seed=0) if kind == "sr" else (frc(n, lam) if lam < n else None)
    if code is not None:
        sch.can_decode = code.can_decode
    P = pieces(sch)
    rng = np.random.default_rng(1)
    rows = rng.integers(2, 5, P)                          # piece p holds rows[p] rows
    A = [rng.standard_normal((k, d)) for k in rows]
    y = [rng.standard_normal(k) for k in rows]

    def grad(theta, p):                                   # Σ_rows ∇ ½(aᵀθ − y)²
        return A[p].T @ (A[p] @ theta - y[p])

    def full(theta):
        return sum(grad(theta, p) for p in range(P))

    M = sch.T + 1
    start = [rng.standard_normal(d) for _ in range(M)]
    S = generate(n, J + sch.T, B, W, lam, seed=3, p_start=0.15)
    assert S.sum() > 5
    got, decoded_at = train_sequential(sch, code, grad, start, lambda t, g: t - eta * g, S)
    assert np.all(decoded_at <= np.arange(J) + sch.T)
    for m in range(M):
        ref = start[m].copy()
        for _ in range(m, J, M):
            ref = ref - eta * full(ref)
        np.testing.assert_allclose(got[m], ref, rtol=1e-10, atol=1e-12)
        assert not np.allclose(ref, start[m])


def test_gc_with_s_equal_lambda_absorbs_conforming_patterns():
    """At most λ stragglers per round (any (B, W, λ)-conforming pattern): GC with s = λ decodes
    every job in its own round (admissibility is ≤ s, not the reference code's strict < s)."""
    n, J = 20, 30
    exactly_s = 0
    for B, W, lam in PARAMS[:5]:
        S = generate(n, J, B, W, lam, seed=5, p_start=0.2)
        exactly_s += int((S.sum(0) == lam).sum())
        code = cyclic(n, lam, seed=0)
        sch = GC(n, lam, J, can_decode=code.can_decode)
        st = sch.init_state()
        for r in range(J):
            st, _, missed = sch.observe(st, r, ~S[:, r])
            assert not missed
        assert np.array_equal(st["decoded_at"], np.arange(J))
    assert exactly_s > 0                 # rounds with exactly s stragglers did occur
