"""Small validators for config values; each error names the offending config field."""
from __future__ import annotations

import math
import numbers
from typing import Annotated, Any

import numpy as np

from fedopt.schema import Check, ConfigError, Float

#: a test fraction (schema type): in [0, 1)
TestFraction = Annotated[Float, Check(lambda v: 0 <= v < 1, "in [0, 1)")]


def positive_int(value: Any, field: str) -> int:
    """``value`` as an int ``>= 1``; ValueError naming ``field`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{field}: must be a positive integer, got {value!r}")
    return int(value)


def real(value: Any, field: str, *, low: float | None = None, high: float | None = None,
         low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float in the given interval; ValueError naming ``field`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(f"{field}: must be a finite number, got {value!r}")
    v = float(value)
    if low is not None and (v < low or (low_open and v == low)):
        raise ConfigError(f"{field}: must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ConfigError(f"{field}: must be {'<' if high_open else '<='} {high}, got {value!r}")
    return v


def boolean(value: Any, field: str) -> bool:
    """``value`` as a bool (Python or numpy bool only; no truthy strings)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{field}: must be true or false, got {value!r}")
    return bool(value)


def fraction(value: Any, field: str) -> float:
    """A test fraction in ``[0, 1)``."""
    return real(value, field, low=0.0, high=1.0, high_open=True)


def seed_streams(seed: Any, count: int) -> list[np.random.Generator]:
    """``count`` independent numpy Generators spawned from ``SeedSequence(seed)``.

    Separate streams keep stages independent: e.g. changing ``test_fraction`` does not change
    which client owns a row.
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    return [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(count)]
