"""Seeded per-(worker, round) delay models for gradient-coding runtime studies (spec
gradient_coding.md §3.3). A model is a function ``times(load) -> float64 [n, rounds]``: worker i's
time in round r for a task of normalized load ℓ (fraction of one job's data); every draw is keyed
by (seed, worker, round), so the same matrix of randomness is reused across schemes (common random
numbers) and runs replay.

Bursty two-state Markov (Gilbert–Elliott): each worker's hidden state Good/Bad evolves per round
with P(G→B) = p, P(B→G) = q (stationary Bad fraction p/(p+q), mean burst 1/q), started from the
stationary law; ``E ~ Exp(mean m)``;

    time = c0 + c1·ℓ·(1 + E)·(slow if Bad else 1)              (overhead_slows = False, §3.3)
    time = (c0 + c1·ℓ·(1 + E))·(slow if Bad else 1)            (overhead_slows = True)

The second form lets the load-independent per-round overhead straggle too, as in the authors'
Lambda traces (spec §6: with the first form uncoded training finishes first at n = 256).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from fedopt.rng import STREAM_DELAYS, keyed_uniform


def gilbert_elliott_states(n: int, rounds: int, p: float, q: float, seed: int = 0) -> np.ndarray:
    """bool ``[n, rounds]``: True where worker i is Bad in round r."""
    u = keyed_uniform(seed, STREAM_DELAYS, 1, np.arange(n)[:, None], np.arange(rounds)[None, :])
    bad = np.zeros((n, rounds), dtype=bool)
    state = u[:, 0] < p / (p + q)
    bad[:, 0] = state
    for r in range(1, rounds):
        state = np.where(state, u[:, r] >= q, u[:, r] < p)
        bad[:, r] = state
    return bad


def gilbert_elliott(n: int, rounds: int, seed: int = 0, p: float = 0.02, q: float = 0.5,
                    slow: float = 5.0, c0: float = 0.5, c1: float = 2.0, m: float = 0.5,
                    overhead_slows: bool = False) -> Callable[[float], np.ndarray]:
    """The Gilbert–Elliott delay model (module docstring) as ``times(load)``."""
    bad = gilbert_elliott_states(n, rounds, p, q, seed)
    u = keyed_uniform(seed, STREAM_DELAYS, 2, np.arange(n)[:, None], np.arange(rounds)[None, :])
    E = -m * np.log1p(-u)
    factor = np.where(bad, slow, 1.0)

    def times(load: float) -> np.ndarray:
        if overhead_slows:
            return (c0 + c1 * load * (1.0 + E)) * factor
        return c0 + c1 * load * (1.0 + E) * factor

    times.bad = bad           # type: ignore[attr-defined]
    return times
