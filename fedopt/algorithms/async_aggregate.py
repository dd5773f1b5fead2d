"""One asynchronous step's aggregate, shared by the virtual-clock family
(:mod:`fedopt.algorithms.asynchronous`) and the real-time driver (:mod:`fedopt.server.realtime`):

    Δ^n = Σ_{i ∈ A(n), kept} ω_i Δ_i · (Σ_{A(n)} ω / Σ_{kept} ω)        (local loss likewise)

a running weighted sum of parameter dicts, a running weighted mean of the local losses, and the
one renormalisation over the arrivals that were kept (non-finite ones left out under
``on_nonfinite: drop``), with the count of those left out kept in the loop's ``totals``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from fedopt.algorithms.base import Params
from fedopt.engine.executor import drop_scale
from fedopt.engine.nonfinite import DROPPED_KEY


def add_call(total: "ParamSum", loss: "WeightedMean", out: Any, weights: np.ndarray,
             ids: np.ndarray) -> None:
    """Add a weighted executor call's sums, undoing the executor's own renormalisation over its
    kept jobs (the step renormalises once, over all its arrivals: :func:`renormalized`)."""
    if not out.updates:
        return
    kept_w = float(np.sum(np.asarray(weights, dtype=np.float64)[out.kept(len(ids))]))
    s = drop_scale(out.weight_sum, kept_w)
    if s == 1.0:
        total.add(out.delta_sum)
        loss.add(out.loss_sum, out.weight_sum)
    else:
        total.add(out.delta_sum, 1.0 / s)
        loss.add(out.loss_sum / s, kept_w)


def renormalized(a: dict, total: "ParamSum", loss: "WeightedMean", w: np.ndarray,
                 lost: np.ndarray) -> tuple[Params | None, float | None]:
    """The step's ``(Δ^n, local loss)`` with the arrivals in ``lost`` left out: Δ^n scaled by
    Σ_{A(n)} ω / Σ_{kept} ω (:func:`~fedopt.engine.executor.drop_scale`); ``(None, None)`` when
    nothing is kept. Counts the dropped arrivals (cumulative, ``totals``)."""
    if not lost.any():
        return total.value, loss.value
    a["totals"][DROPPED_KEY] = int(a["totals"].get(DROPPED_KEY, 0)) + int(lost.sum())
    if lost.all() or total.value is None:
        return None, None
    s = drop_scale(float(np.sum(w)), float(np.sum(w[~lost])))
    if s != 1.0:
        total.value = {k: v * s for k, v in total.value.items()}
    return total.value, loss.value


class ParamSum:
    """Running sum of parameter dicts, each optionally scaled; ``value`` is None when empty."""

    def __init__(self) -> None:
        self.value: Params | None = None

    def add(self, term: Params, scale: float | None = None) -> None:
        if scale is not None:
            term = {k: v * scale for k, v in term.items()}
        self.value = term if self.value is None else {k: self.value[k] + term[k] for k in term}


class WeightedMean:
    """Running Σ numerator / Σ weight; ``value`` is None before any positive weight."""

    def __init__(self) -> None:
        self.num = self.den = 0.0

    def add(self, num: float, den: float) -> None:
        self.num += num
        self.den += den

    @property
    def value(self) -> float | None:
        return self.num / self.den if self.den > 0 else None
