"""Pacing functions against their formulas; curriculum/anti/random orders; client pools."""
import math

import numpy as np
import pytest

from fedopt.local.curriculum import PACINGS, client_pool, order_rows, pacing, prefix_size


@pytest.mark.parametrize("name", PACINGS)
def test_pacing_start_end_monotone_and_clip(name):
    N, T, a, b = 137, 200, 0.8, 0.2
    vals = [pacing(name, t, T, N, a, b) for t in range(0, 2 * T)]
    assert vals[0] == max(1, math.floor(b * N))
    assert all(1 <= v <= N for v in vals)
    assert all(x <= y for x, y in zip(vals, vals[1:]))
    end = pacing(name, a * T, T, N, a, b)
    if name in ("linear", "quad", "sqrt", "step"):
        assert end == N
    else:
        assert N - 1 <= end <= N
    assert all(pacing(name, t, T, N, a, 1.0) == N for t in (0, 5, 150))


def test_pacing_formulas_at_a_point():
    N, T, a, b, t = 100, 50, 0.5, 0.1, 10
    r = t / (a * T)
    assert pacing("linear", t, T, N, a, b) == int(10 + 90 * r)
    assert pacing("quad", t, T, N, a, b) == int(10 + 90 * r ** 2)
    assert pacing("sqrt", t, T, N, a, b) == int(10 + 90 * r ** 0.5)
    assert pacing("exp", t, T, N, a, b) == int(10 + 90 * (math.exp(10 * r) - 1) / (math.exp(10) - 1))
    assert pacing("log", t, T, N, a, b) == int(10 + 90 * (1 + math.log(r + math.exp(-10)) / 10))
    assert prefix_size(0, T, N, "linear", a, b, 32) == 32


def test_orders_sorted_reversed_and_constant_score_is_random():
    rng = np.random.default_rng(0)
    s = rng.normal(size=50)
    cur = order_rows(s, "curriculum", 1, 2, 3)
    anti = order_rows(s, "anti", 1, 2, 3)
    assert np.all(np.diff(s[cur]) >= 0) and np.all(np.diff(s[anti]) <= 0)
    assert np.array_equal(cur, anti[::-1])          # distinct scores: anti is the reverse
    rand = order_rows(s, "random", 1, 2, 3)
    assert sorted(rand) == list(range(50))
    const = np.full(50, 0.7)
    assert np.array_equal(order_rows(const, "curriculum", 1, 2, 3), rand)
    assert np.array_equal(order_rows(const, "anti", 1, 2, 3), rand)
    assert not np.array_equal(order_rows(const, "random", 1, 2, 4), rand)   # keyed


def test_client_pool_is_a_prefix_of_the_ranking_and_b1_is_everyone():
    s = np.array([0.5, 0.1, 0.9, 0.3])
    pool = client_pool(s, "curriculum", 0, 100, "linear", 0.8, 0.5, 0)
    assert pool.tolist() == [1, 3]
    assert sorted(client_pool(s, "anti", 0, 100, "linear", 0.8, 1.0, 0).tolist()) == [0, 1, 2, 3]
    # never fewer than min_size (the server's clients per round): the two easiest, then 3rd
    assert client_pool(s, "curriculum", 0, 100, "linear", 0.8, 0.25, 0, min_size=3).tolist() \
        == [1, 3, 0]
