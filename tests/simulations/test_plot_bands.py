"""`fedopt plot` bands: per-client worst–best 10 % and the sampled estimate's CI."""
from __future__ import annotations

import numpy as np

from fedopt.simulations.plot import _band


class _Axes:
    def __init__(self):
        self.calls = []

    def fill_between(self, x, lo, hi, **kw):
        self.calls.append((np.asarray(x), np.asarray(lo), np.asarray(hi)))


ROWS = [{"round": 2, "test_accuracy": 0.5, "test_accuracy_ci": 0.1,
         "client_test_accuracy_mean": 0.4, "client_test_accuracy_worst10": 0.1,
         "client_test_accuracy_best10": 0.9},
        {"round": 1, "test_accuracy": 0.3, "test_accuracy_ci": None},
        {"round": 3, "test_accuracy": 0.6, "test_accuracy_ci": 0.05}]


def test_bands_follow_the_recorded_spread():
    ax = _Axes()
    _band(ax, ROWS, "round", "test_accuracy", "C0", None)
    x, lo, hi = ax.calls[0]
    np.testing.assert_allclose(x, [2, 3])           # rows without a CI get no band
    np.testing.assert_allclose(lo, [0.4, 0.55])
    np.testing.assert_allclose(hi, [0.6, 0.65])
    _band(ax, ROWS, "round", "client_test_accuracy_mean", "C1", None)
    x, lo, hi = ax.calls[1]
    assert x.tolist() == [2] and lo.tolist() == [0.1] and hi.tolist() == [0.9]
    _band(ax, ROWS, "round", "test_accuracy", "C0", until=3)   # non-finite from round 3
    assert ax.calls[2][0].tolist() == [2]
    _band(ax, ROWS, "round", "test_loss", "C0", None)          # nothing recorded: no band
    assert len(ax.calls) == 3
