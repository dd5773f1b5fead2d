"""Per-client multipliers: hardware speed ``s_i`` (compute) and link slowness ``l_i`` (transfers).

=========  ==============================================================================
name       factor of client i (N clients)
=========  ==============================================================================
constant   1
linear     the ``F-X`` grid of Fraboni et al.: ``1 − i · (spread/100) / (N − 1)``, so client 0
           is the slowest (1) and client N−1 is ``spread`` % faster (``spread`` in [0, 100))
list       ``values[i]`` (one positive entry per client; +inf: the client never returns)
lognormal  ``exp(sigma · Z_i)``, Z_i ~ N(0, 1) keyed by client (median 1)
cohort     ``factor`` for the clients of a slow cohort, 1 for the others; the cohort is
           ``clients`` (explicit ids) or else the ``round(fraction · N)`` clients with the
           smallest keyed uniform draws
=========  ==============================================================================
"""
from __future__ import annotations

from typing import Any

import numpy as np

from fedopt.schema import ConfigError
from fedopt.rng import STREAM_CLOCK, keyed_normal, keyed_uniform


def client_factors(spec: dict[str, Any], num_clients: int, seed: int, tag: tuple[int, ...],
                   path: str) -> np.ndarray:
    """Factors [N] (float64, > 0, possibly +inf) of a validated factor spec at ``path``."""
    name, n = spec["name"], num_clients
    ids = np.arange(n)
    if name == "constant":
        return np.ones(n)
    if name == "linear":
        if n == 1:
            return np.ones(1)
        return 1.0 - ids * (spec["spread"] / 100.0) / (n - 1)
    if name == "list":
        values = np.asarray(spec["values"], dtype=np.float64)
        if len(values) != n:
            raise ConfigError(f"{path}.values: has {len(values)} entries, the data set has "
                              f"{n} clients")
        return values
    if name == "lognormal":
        return np.exp(spec["sigma"] * keyed_normal(seed, STREAM_CLOCK, *tag, ids))
    if name == "cohort":
        out = np.ones(n)
        if spec["clients"] is not None:
            members = np.asarray(spec["clients"], dtype=np.int64)
            bad = members[(members < 0) | (members >= n)]
            if len(bad):
                raise ConfigError(f"{path}.clients: ids must be in [0, {n}), got {bad[0]}")
        else:
            k = int(round(spec["fraction"] * n))
            members = np.argsort(keyed_uniform(seed, STREAM_CLOCK, *tag, ids), kind="stable")[:k]
        out[members] = spec["factor"]
        return out
    raise ValueError(f"unknown client-factor spec {name!r}")
