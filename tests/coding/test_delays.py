"""Delay models (spec §5 item 14): Gilbert–Elliott Bad fraction p/(p+q) and mean burst 1/q,
the exponential part's mean, replay by seed."""
import numpy as np
import pytest

from fedopt.coding.delays import gilbert_elliott, gilbert_elliott_states


def test_gilbert_elliott_stationary_fraction_and_burst_length():
    p, q = 0.05, 0.4
    bad = gilbert_elliott_states(100, 2000, p, q, seed=1)       # 2·10^5 worker-rounds
    assert bad.mean() == pytest.approx(p / (p + q), rel=0.05)
    lengths = []
    for row in bad:
        edges = np.flatnonzero(np.diff(np.r_[0, row.astype(int), 0]))
        lengths += list(edges[1::2] - edges[::2])
    assert np.mean(lengths) == pytest.approx(1 / q, rel=0.05)


def test_gilbert_elliott_times_and_replay():
    t = gilbert_elliott(200, 500, seed=2, p=0.02, q=0.5, slow=5.0, c0=0.5, c1=2.0, m=0.5)
    good = ~t.bad
    # E[time | Good] = c0 + c1·ℓ·(1 + m)
    assert t(0.25)[good].mean() == pytest.approx(0.5 + 2.0 * 0.25 * 1.5, rel=0.01)
    assert np.array_equal(t(0.25), gilbert_elliott(200, 500, seed=2)(0.25))
    assert np.all(t(0.0) == 0.5)                        # no load: the overhead only
    slow = gilbert_elliott(200, 500, seed=2, overhead_slows=True)
    assert np.allclose(slow(0.0)[t.bad], 2.5) and np.allclose(slow(0.0)[good], 0.5)
