"""Privacy accounting by the ``dp-accounting`` library (Google): ε from noise, and noise for ε.

Every private release in fedopt is a Gaussian mechanism on a sum whose sensitivity is the clip
norm C, with noise multiplier z (noise std z·C), composed over rounds:

* **DP-FedAvg** (user-level DP): each round samples clients at rate q = m/N and releases
  Σ_i clip_C(Δ_i) + N(0, z²C² I): ``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` composed R
  times (q = 1: ``GaussianDpEvent(z)`` R times, exactly Gaussian). fedopt samples exactly m
  clients without replacement; accounting it as Poisson sampling at q = m/N is the usual
  approximation (McMahan et al., ICLR 2018; TensorFlow Privacy), not a proof for fixed-size
  sampling.
* **DIFF2** (record-level DP of each client's data, full batch): R1 restart rounds with z1 and
  R2 = R − R1 difference rounds with z2: ``GaussianDpEvent(z1)`` R1 times and
  ``GaussianDpEvent(z2)`` R2 times. The composition is exactly Gaussian with
  μ² = R1/z1² + R2/z2² (Dong, Roth & Su's GDP); the PLD accountant reproduces it to its
  discretisation.

Accountants (``accountant``): ``"rdp"`` (Rényi DP, Mironov 2017; fast, an upper bound) or
``"pld"`` (privacy loss distributions, Koskela et al. / Doroshenko et al. 2022; tight, slower for
q < 1). Adjacency: add/remove one record (DIFF2) or one client (DP-FedAvg); under replace-one
the sensitivity doubles. Calibration (:func:`calibrate`, :func:`calibrate_diff2`) is the
library's ``calibrate_dp_mechanism`` (a root search that guarantees ε ≤ the target).
"""
from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

import dp_accounting as dpa
import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant as rdp_module

ACCOUNTANTS = ("rdp", "pld")


@contextmanager
def _quiet() -> Iterator[None]:
    """The RDP accountant logs (through absl) each Rényi order it drops for non-convergence;
    those orders are left out of its minimum, so the bound stays valid: silence the log."""
    log = logging.getLogger("absl")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _accountant(accountant: str, pld_interval: float | None = None) -> dpa.PrivacyAccountant:
    """A fresh accountant; ``pld_interval``: the PLD grid (None: the library's default)."""
    if accountant == "rdp":
        return dpa.rdp.RdpAccountant()
    if accountant == "pld":
        return (dpa.pld.PLDAccountant() if pld_interval is None else
                dpa.pld.PLDAccountant(value_discretization_interval=pld_interval))
    raise ValueError(f"accountant: one of {ACCOUNTANTS}, got {accountant!r}")


def _round_event(z: float, q: float) -> dpa.DpEvent:
    gauss = dpa.GaussianDpEvent(z)
    return gauss if q >= 1.0 else dpa.PoissonSampledDpEvent(q, gauss)


def _check(z: float, q: float, rounds: int, delta: float) -> None:
    if not (z >= 0) or math.isinf(z):
        raise ValueError(f"noise_multiplier: must be finite and >= 0, got {z!r}")
    if not 0 < q <= 1:
        raise ValueError(f"sampling_rate: must be in (0, 1], got {q!r}")
    if rounds < 0:
        raise ValueError(f"rounds: must be >= 0, got {rounds!r}")
    if not 0 < delta < 1:
        raise ValueError(f"delta: must be in (0, 1), got {delta!r}")


@lru_cache(maxsize=4096)
def epsilon(noise_multiplier: float, sampling_rate: float, rounds: int, delta: float,
            accountant: str = "rdp") -> float:
    """ε after ``rounds`` rounds of the (Poisson-subsampled at q = ``sampling_rate``) Gaussian
    mechanism with noise multiplier z = ``noise_multiplier`` at ``delta``: ``inf`` for z = 0
    (no noise), 0 for no rounds. ValueError naming the argument for an impossible value."""
    _check(noise_multiplier, sampling_rate, rounds, delta)
    if rounds == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    acc = _accountant(accountant)
    with _quiet():
        acc.compose(_round_event(noise_multiplier, sampling_rate), int(rounds))
        return float(acc.get_epsilon(delta))


@lru_cache(maxsize=256)
def calibrate(target_epsilon: float, sampling_rate: float, rounds: int, delta: float,
              accountant: str = "rdp") -> float:
    """The smallest noise multiplier z (to the library's tolerance) whose ε after ``rounds``
    rounds at rate q is at most ``target_epsilon``: 0 for ε = inf or no rounds."""
    _check(1.0, sampling_rate, rounds, delta)
    if not target_epsilon > 0:
        raise ValueError(f"epsilon: must be > 0, got {target_epsilon!r}")
    if math.isinf(target_epsilon) or rounds == 0:
        return 0.0
    with _quiet():
        return float(dpa.calibrate_dp_mechanism(
            lambda: _accountant(accountant, LEDGER_PLD_INTERVAL),
            lambda z: dpa.SelfComposedDpEvent(_round_event(z, sampling_rate), int(rounds)),
            float(target_epsilon), float(delta)))


# --------------------------------------------------------------------------- DIFF2
def diff2_rounds(rounds: int, restart_period: int) -> tuple[int, int]:
    """(R1, R2): restart rounds r ≡ 0 mod T among r = 0..R−1, R1 = ⌈R/T⌉, and the others."""
    r1 = -(-int(rounds) // int(restart_period))
    return r1, int(rounds) - r1


@lru_cache(maxsize=4096)
def epsilon_diff2(z1: float, r1: int, z2: float, r2: int, delta: float,
                  accountant: str = "pld") -> float:
    """ε of R1 Gaussian releases with noise multiplier z1 and R2 with z2 (full batch, q = 1);
    ``inf`` when a release has no noise."""
    _check(z1, 1.0, r1, delta)
    _check(z2, 1.0, r2, delta)
    if r1 + r2 == 0:
        return 0.0
    if (r1 and z1 == 0) or (r2 and z2 == 0):
        return math.inf
    acc = _accountant(accountant)
    with _quiet():
        if r1:
            acc.compose(dpa.GaussianDpEvent(z1), int(r1))
        if r2:
            acc.compose(dpa.GaussianDpEvent(z2), int(r2))
        return float(acc.get_epsilon(delta))


@dataclass(frozen=True)
class Diff2Noise:
    """DIFF2's calibrated noise multipliers: z1 (restarts, R1 of them), z2 (differences, R2)."""

    z1: float
    z2: float
    r1: int
    r2: int


@lru_cache(maxsize=256)
def calibrate_diff2(target_epsilon: float, delta: float, rounds: int, restart_period: int,
                    restart_share: float = 0.5, accountant: str = "pld") -> Diff2Noise:
    """Noise multipliers (z1, z2) of DIFF2 for a target (ε, δ) over ``rounds`` rounds with
    restart period T.

    The split (spec ``seed_extras.md`` §6.2): a share ρ = ``restart_share`` of the GDP budget μ²
    goes to the R1 restarts and 1 − ρ to the R2 differences, z1 = s·√(R1/ρ),
    z2 = s·√(R2/(1 − ρ)); the scale s is found by the library's calibration so that the
    accountant's ε is at most the target (s = 1/μ* with μ* = 1/σ_Gauss(ε, δ) under exact GDP;
    the RDP accountant, looser, needs a larger s). ε = inf gives zeros; with R2 = 0 only
    restarts are noised (z2 = 0)."""
    if not 0 < restart_share < 1:
        raise ValueError(f"restart_share: must be in (0, 1), got {restart_share!r}")
    if restart_period < 1:
        raise ValueError(f"restart_period: must be >= 1, got {restart_period!r}")
    r1, r2 = diff2_rounds(rounds, restart_period)
    if not target_epsilon > 0:
        raise ValueError(f"epsilon: must be > 0, got {target_epsilon!r}")
    if math.isinf(target_epsilon) or rounds == 0:
        return Diff2Noise(0.0, 0.0, r1, r2)
    rho = restart_share if r2 else 1.0
    a, b = math.sqrt(r1 / rho), (math.sqrt(r2 / (1 - rho)) if r2 else 0.0)

    def event(s: float) -> dpa.DpEvent:
        parts = [dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(s * a), r1)]
        if r2:
            parts.append(dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(s * b), r2))
        return dpa.ComposedDpEvent(parts)

    with _quiet():
        s = float(dpa.calibrate_dp_mechanism(
            lambda: _accountant(accountant, LEDGER_PLD_INTERVAL), event, float(target_epsilon),
            float(delta)))
    return Diff2Noise(s * a, s * b, r1, r2)


# --------------------------------------------------------------------------- per-round ledger
#: the PLD discretisation of the per-round ledger (the library's default 1e-4 is ~10x slower;
#: a coarser grid stays a valid, slightly pessimistic upper bound) and of the calibration, so
#: that the last round's ``epsilon_spent`` is the calibrated ε, never above the target
LEDGER_PLD_INTERVAL = 1e-3


@lru_cache(maxsize=256)
def _rdp_of_round(z: float, q: float) -> tuple[tuple[float, ...], np.ndarray] | None:
    """(orders, RDP vector) of one round's event, from the library's accountant; None when its
    internals are not where this version keeps them (then the ledger composes afresh)."""
    acc = dpa.rdp.RdpAccountant()
    with _quiet():
        acc.compose(_round_event(z, q), 1)
    orders, rdp = getattr(acc, "_orders", None), getattr(acc, "_rdp", None)
    if orders is None or rdp is None:
        return None
    return tuple(float(a) for a in orders), np.asarray(rdp, dtype=np.float64)


def ledger_epsilon(parts: tuple[tuple[float, float, int], ...], delta: float,
                   accountant: str = "rdp") -> float:
    """ε of the composition of ``count`` rounds of the (Poisson-subsampled at rate q) Gaussian
    mechanism with noise multiplier z, for each (z, q, count) of ``parts``: the per-round
    ``epsilon_spent`` of a run. RDP: the library's per-round RDP vector times the counts, turned
    into ε by its ``compute_epsilon`` (one RDP computation per (z, q), not per round); PLD:
    composed afresh on a grid of :data:`LEDGER_PLD_INTERVAL`. inf when a counted round has no
    noise, 0 when nothing is counted."""
    parts = tuple((float(z), float(q), int(c)) for z, q, c in parts if c > 0)
    for z, q, c in parts:
        _check(z, q, c, delta)
    if not parts:
        return 0.0
    if any(z == 0 for z, _, _ in parts):
        return math.inf
    if accountant == "rdp":
        vectors = [_rdp_of_round(z, q) for z, q, _ in parts]
        if all(v is not None for v in vectors):
            orders = vectors[0][0]
            total = sum(c * v[1] for (_, _, c), v in zip(parts, vectors))
            with _quiet():
                return float(rdp_module.compute_epsilon(orders, total, delta)[0])
        acc: dpa.PrivacyAccountant = dpa.rdp.RdpAccountant()
    else:
        acc = _accountant(accountant, LEDGER_PLD_INTERVAL)
    with _quiet():
        for z, q, c in parts:
            acc.compose(_round_event(z, q), c)
        return float(acc.get_epsilon(delta))
