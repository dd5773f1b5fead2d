"""Gradient codes against independent oracles (spec gradient_coding.md §5, items 1–7, 9):
Σ_{i∈F} a_i f_i must equal Σ_j g_j for random partition gradients, for every straggler set."""
import itertools

import numpy as np
import pytest
import torch

from fedopt.coding import (GradientCode, NotDecodable, combine, cyclic, frc, from_matrix,
                           ignore_stragglers_vector, least_squares, uncoded)

SMALL = [(3, 1), (7, 2), (10, 4), (12, 3)]


def _partition_grads(k, d=5, seed=0):
    return np.random.default_rng(seed).standard_normal((k, d))


def _rel(x, y):
    return float(np.abs(x - y).max() / np.abs(y).max())


def _codes(n, s):
    out = [cyclic(n, s, seed=3)]
    if n % (s + 1) == 0:
        out.append(frc(n, s))
    return out


@pytest.mark.parametrize("n,s", SMALL)
def test_exact_recovery_every_straggler_set_and_superset(n, s):
    G = _partition_grads(n)
    g = G.sum(0)
    for code in _codes(n, s):
        f = code.B @ G                                   # f_i = Σ_j B_ij g_j
        for size in range(n - s, n + 1):                 # every F with |F| ≥ n − s
            for F in itertools.combinations(range(n), size):
                a = code.decode(F)
                assert np.all(a[np.setdiff1d(np.arange(n), F)] == 0)
                assert _rel(a @ f, g) < 1e-9, (code.name, F)


@pytest.mark.parametrize("n,s", [(64, 7), (256, 15)])
def test_random_straggler_sets_large_n(n, s):
    code = cyclic(n, s, seed=0)
    rng = np.random.default_rng(1)
    G = rng.standard_normal((n, 50))
    g = G.sum(0)
    f64 = code.B @ G
    f32 = torch.as_tensor(f64, dtype=torch.float32)
    errs32 = []
    for _ in range(50):
        F = rng.choice(n, n - s, replace=False)
        a = code.decode(F)
        assert _rel(a @ f64, g) < 1e-8
        errs32.append(_rel(combine(a, f32).numpy(), g))
    # float32 coded gradients lose digits by the coefficients' size (spec §6: 5e-4 .. 2e-2 at
    # n = 256); the float64 combine keeps them bounded, and finite
    assert max(errs32) < 0.1


def test_frc_and_cyclic_structure():
    for n, s in SMALL + [(64, 7)]:
        c = cyclic(n, s, seed=5)
        for i in range(n):
            expect = np.sort((i + np.arange(s + 1)) % n)
            np.testing.assert_array_equal(c.supports[i], expect)
            assert c.B[i, i] == 1.0
        assert np.all((c.B != 0).sum(0) == s + 1)
        np.testing.assert_allclose(c.generator @ c.B.T, 0, atol=1e-9 * np.abs(c.B).max())
        np.testing.assert_allclose(c.generator.sum(1), 0, atol=1e-12)
        assert np.linalg.matrix_rank(c.B) == n - s
        assert c.worker_load == s + 1
        if n % (s + 1) == 0:
            f = frc(n, s)
            ref = np.zeros((n, n))
            for q in range(n // (s + 1)):
                ref[q * (s + 1):(q + 1) * (s + 1), q * (s + 1):(q + 1) * (s + 1)] = 1
            np.testing.assert_array_equal(f.B, ref)
            assert np.linalg.matrix_rank(f.B) == n // (s + 1)
    assert cyclic(10, 4, seed=1).B.tobytes() == cyclic(10, 4, seed=1).B.tobytes()
    assert cyclic(10, 4, seed=1).B.tobytes() != cyclic(10, 4, seed=2).B.tobytes()


def test_worked_example_n3_s1():
    B = np.array([[0.5, 1, 0], [0, 1, -1], [0.5, 0, 1]])
    code = from_matrix(B, 1)
    expect = {0: [0, 1, 2], 1: [1, 0, 1], 2: [2, -1, 0]}      # straggler -> a (spec §1.3)
    for straggler, a_ref in expect.items():
        a = code.decode([i for i in range(3) if i != straggler])
        np.testing.assert_allclose(a, a_ref, atol=1e-12)


def test_negative_cases_raise_clear_errors():
    n, s = 12, 3
    f = frc(n, s)
    assert not f.can_decode(range(4, 12))           # group 0 = workers 0..3 all straggle
    with pytest.raises(NotDecodable, match="the 8 workers that arrived.*n − s = 9.*one worker of each"):
        f.decode(range(4, 12))
    c = cyclic(n, s, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        F = rng.choice(n, n - s - 1, replace=False)
        _, resid = least_squares(c.B, np.isin(np.arange(n), F))
        assert resid > 1e-4
        assert not c.can_decode(F)
    with pytest.raises(NotDecodable, match="at least n − s = 9"):
        c.decode(range(7))
    # a column of weight s = 1 (partition 0 only at worker 0): losing worker 0 loses g_0
    B = np.eye(4)
    B[1, 1:3] = 1
    B[2, 2:4] = 1
    B[3, 3] = 1
    B[3, 1] = 1
    code = from_matrix(B, 1)
    assert not code.can_decode([1, 2, 3])
    with pytest.raises(ValueError, match=r"s \+ 1 = 3 must divide n = 10"):
        frc(10, 2)
    with pytest.raises(ValueError, match="stragglers must be in"):
        cyclic(4, 4)
    with pytest.raises(ValueError, match=r"worker ids must be in \[0, 4\)"):
        code.decode([0, 7])


def test_frc_early_decode_one_per_group():
    n, s = 12, 3
    code = frc(n, s)
    G = _partition_grads(n)
    F = [1, 6, 11]                               # one per group: 3 < n − s = 9 arrivals
    a = code.decode(F)
    assert _rel(a @ (code.B @ G), G.sum(0)) < 1e-12
    assert not code.can_decode([1, 6])


def test_cache_per_pattern():
    code = cyclic(16, 3, seed=0)
    F = list(range(3, 16))
    a1 = code.decode(F)
    a2 = code.decode(np.isin(np.arange(16), F))  # same pattern as a mask
    assert (code.cache_hits, code.cache_misses) == (1, 1)
    np.testing.assert_array_equal(a1, a2)
    a1[:] = 0                                    # callers get copies
    assert code.decode(F).any()


def test_uncoded_needs_everyone():
    code = uncoded(5)
    np.testing.assert_array_equal(code.decode(range(5)), np.ones(5))
    assert not code.can_decode(range(4))


def test_weighted_loss_trick_equals_weighted_partition_gradients():
    """∇_θ Σ_j B_ij L_j(θ) = Σ_j B_ij ∇L_j(θ) (linearity; spec §5 item 7)."""
    torch.manual_seed(0)
    n, s, rows, d = 6, 2, 4, 3
    code = cyclic(n, s, seed=1)
    X = torch.randn(n, rows, d, dtype=torch.float64)
    y = torch.randn(n, rows, dtype=torch.float64)
    theta = torch.randn(d, dtype=torch.float64)

    def loss_sums(t):                            # L_j = Σ_{r∈D_j} (x_rᵀθ − y_r)²
        return ((X @ t - y) ** 2).sum(1)

    per_part = torch.stack([torch.autograd.functional.jacobian(lambda t: loss_sums(t)[j], theta)
                            for j in range(n)])
    Bt = torch.tensor(code.B)
    for i in range(n):
        t = theta.clone().requires_grad_(True)
        (Bt[i] * loss_sums(t)).sum().backward()
        torch.testing.assert_close(t.grad, Bt[i] @ per_part, rtol=1e-10, atol=1e-10)


def test_ignore_stragglers_unbiased_only_for_random_sets():
    n, s, draws = 10, 3, 10_000
    G = _partition_grads(n, d=4, seed=2) + 1.0
    g = G.sum(0)
    rng = np.random.default_rng(0)
    est = np.stack([ignore_stragglers_vector(n, rng.choice(n, n - s, replace=False)) @ G
                    for _ in range(draws)])
    se = est.std(0) / np.sqrt(draws)              # standard error of the Monte-Carlo mean
    assert np.all(np.abs(est.mean(0) - g) < 5 * se)
    spread = se.max()
    fixed = ignore_stragglers_vector(n, range(n - s)) @ G     # the same s straggle every time
    assert np.abs(fixed - g).max() > 20 * spread


def test_approximate_decoder_is_exact_when_decodable_and_least_squares_otherwise():
    code = cyclic(12, 3, seed=0)
    G = _partition_grads(12)
    mask = np.ones(12, bool)
    mask[[0, 1, 2, 3, 4]] = False                 # 5 > s stragglers
    a, resid = least_squares(code.B, mask)
    BF = code.B[mask]
    a_ref = np.linalg.pinv(BF.T) @ np.ones(12)     # the minimum-residual solution
    np.testing.assert_allclose(BF.T @ a[mask], BF.T @ a_ref, atol=1e-8)
    assert resid == pytest.approx(np.abs(BF.T @ a_ref - 1).max(), rel=1e-6)
    mask[:] = True
    a, resid = least_squares(code.B, mask)
    assert resid < 1e-9 and _rel(a @ (code.B @ G), G.sum(0)) < 1e-9
