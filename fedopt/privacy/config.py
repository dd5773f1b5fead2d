"""The ``privacy:`` config section: schema, calibration at validation, and the run's hook.

    privacy:
      mechanism: dp_fedavg          # or diff2 (with algorithm.name: diff2)
      epsilon: 2.0                  # the budget ε (.inf: no noise); or give noise_multiplier
      delta: 1.0e-5
      clip: 1.0                     # C (dp_fedavg) / C1 (diff2)

:func:`resolve_privacy` fills what the user left out (``noise_multiplier`` calibrated from
``epsilon`` by :mod:`fedopt.privacy.accounting`, ``noise``, ``accountant``,
``restart_share``) so ``fedopt validate`` prints it, and refuses a run whose configured
``algorithm.rounds`` at the given noise would spend more than ``epsilon``.
:func:`with_privacy` wraps a built FedAvg-family algorithm into
:class:`~fedopt.privacy.dp_fedavg.DPFedAvg` (DIFF2 reads the section itself).
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Optional

from pydantic import Field, model_validator

from fedopt.schema import (Bool, Check, ConfigError, Float, InfFloat, NonNegativeFloat,
                           PositiveFloat, Schema, fail)

#: the algorithms dp_fedavg wraps (built as fedopt.algorithms.fedavg.FedAvg)
FEDAVG_FAMILY = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedprox")
_DIFF2_ONLY = ("clip_diff", "noise_multiplier_diff", "restart_share")


class PrivacyConfig(Schema):
    """``privacy:``: differential privacy of the run (:mod:`fedopt.privacy`)."""

    what = "privacy"
    mechanism: Literal["dp_fedavg", "diff2"] = Field(
        ..., description="dp_fedavg: user-level DP-FedAvg/FedSGD on a FedAvg-family algorithm; "
                         "diff2: record-level DIFF2 (algorithm.name: diff2)")
    epsilon: Optional[Annotated[InfFloat, Check(lambda v: v > 0, "> 0")]] = Field(
        None, description="privacy budget ε (.inf: no noise); noise_multiplier is calibrated "
                          "from it unless given")
    delta: Annotated[Float, Check(lambda v: 0 < v < 1, "in (0, 1)")] = Field(1e-5,
                                                                              description="δ")
    clip: PositiveFloat = Field(..., description="L2 clip norm C (diff2: C1, of gradients)")
    clip_per_layer: Bool = Field(False, description="dp_fedavg: clip each tensor to C/√L "
                                                    "instead of the whole update to C")
    noise: Optional[Literal["central", "local"]] = Field(
        None, description="dp_fedavg: central (server adds σC/m, default) or local (each "
                          "client adds σC/√m); diff2: local only")
    noise_multiplier: Optional[NonNegativeFloat] = Field(
        None, description="σ = z (diff2: z1 of restarts); null: calibrated from epsilon")
    clip_diff: Optional[PositiveFloat] = Field(None, description="diff2: C2, of gradient "
                                                                 "differences")
    noise_multiplier_diff: Optional[NonNegativeFloat] = Field(
        None, description="diff2: z2 of differences; null: calibrated from epsilon")
    restart_share: Optional[Annotated[Float, Check(lambda v: 0 < v < 1, "in (0, 1)")]] = Field(
        None, description="diff2: share ρ of the budget μ² spent on restarts (default 0.5)")
    accountant: Optional[Literal["rdp", "pld"]] = Field(
        None, description="dp-accounting's RDP (default; an upper bound, fast) or PLD "
                          "(tight, slower) accountant")

    @model_validator(mode="after")
    def _consistent(self) -> "PrivacyConfig":
        if self.epsilon is None and self.noise_multiplier is None:
            raise fail("epsilon", "give the budget epsilon (noise calibrated from it), or "
                                  "noise_multiplier (epsilon then computed)")
        if self.mechanism == "dp_fedavg":
            for key in _DIFF2_ONLY:
                if getattr(self, key) is not None:
                    raise fail(key, "read only by mechanism: diff2")
        else:
            if self.clip_diff is None:
                raise fail("clip_diff", "mechanism: diff2 needs clip_diff (C2, the clip norm "
                                        "of gradient differences)")
            if self.clip_per_layer:
                raise fail("clip_per_layer", "diff2 clips each record's whole gradient")
            if self.noise == "central":
                raise fail("noise", "diff2's clients add their own noise (local)")
            if (self.noise_multiplier is None) != (self.noise_multiplier_diff is None):
                raise fail("noise_multiplier_diff", "give both noise_multiplier and "
                                                    "noise_multiplier_diff, or neither")
        return self


def resolve_privacy(config: dict[str, Any], num_clients: int | None) -> dict[str, Any] | None:
    """Fill, in place, the keys of a validated config's ``privacy`` section left null, and check
    the budget; returns the section (None when the run has none).

    ``noise_multiplier`` (diff2: and ``noise_multiplier_diff``) is calibrated from ``epsilon``
    over ``algorithm.rounds`` at sampling rate q = clients_per_round/``num_clients`` (diff2:
    q = 1, restart share ρ); given noise whose ε exceeds ``epsilon`` is refused naming
    ``algorithm.rounds``. ``num_clients`` None (not known before the data, e.g. LEAF): dp_fedavg
    is left for the run; diff2 (q = 1) is calibrated all the same.
    ConfigError naming the field for a section that does not fit the run."""
    p = config.get("privacy")
    alg = config["algorithm"]
    if p is None:
        return None
    from fedopt.privacy import accounting      # dp-accounting: only for runs with privacy

    if config.get("on_nonfinite") == "drop":
        raise ConfigError("on_nonfinite: drop renormalises the average over the clients kept, "
                          "which changes the sensitivity the privacy noise is calibrated to; "
                          "use on_nonfinite: error with privacy")
    if (config.get("executor") or {}).get("realtime"):
        raise ConfigError("executor.realtime: privacy runs the synchronous rounds of "
                          "dp_fedavg / diff2, not the real-time asynchronous driver")
    diff2 = p["mechanism"] == "diff2"
    if diff2 != (alg["name"] == "diff2"):
        raise ConfigError(f"privacy.mechanism: {p['mechanism']} does not fit algorithm.name: "
                          f"{alg['name']} (diff2 goes with algorithm.name: diff2; dp_fedavg "
                          f"with one of {', '.join(FEDAVG_FAMILY)})")
    if not diff2 and alg["name"] not in FEDAVG_FAMILY:
        raise ConfigError(f"privacy.mechanism: dp_fedavg wraps the FedAvg family "
                          f"({', '.join(FEDAVG_FAMILY)}), not algorithm.name: {alg['name']}")
    if not diff2 and alg.get("aggregation_weights") != "uniform":
        raise ConfigError("algorithm.aggregation_weights: dp_fedavg averages the clipped "
                          "updates with the fixed weights 1/m (its sensitivity C/m); set "
                          "algorithm.aggregation_weights: uniform")
    p["accountant"] = p.get("accountant") or "rdp"
    p["noise"] = p.get("noise") or ("local" if diff2 else "central")
    if diff2 and p.get("restart_share") is None:
        p["restart_share"] = 0.5
    if num_clients is None and not diff2:   # q = m/N needs N; diff2's q is 1
        return p
    rounds, delta, eps, acc = int(alg["rounds"]), p["delta"], p.get("epsilon"), p["accountant"]
    try:
        if diff2:
            r1, r2 = accounting.diff2_rounds(rounds, alg["restart_period"])
            if p.get("noise_multiplier") is None:
                noise = accounting.calibrate_diff2(eps, delta, rounds, alg["restart_period"],
                                                   p["restart_share"], acc)
                p["noise_multiplier"], p["noise_multiplier_diff"] = noise.z1, noise.z2
            spent = accounting.epsilon_diff2(p["noise_multiplier"], r1,
                                             p["noise_multiplier_diff"], r2, delta, acc)
            given = (f"privacy.noise_multiplier {p['noise_multiplier']:.6g} and "
                     f"noise_multiplier_diff {p['noise_multiplier_diff']:.6g}")
        else:
            q = alg["clients_per_round"] / num_clients
            if p.get("noise_multiplier") is None:
                p["noise_multiplier"] = accounting.calibrate(eps, q, rounds, delta, acc)
            spent = accounting.epsilon(p["noise_multiplier"], q, rounds, delta, acc)
            given = f"privacy.noise_multiplier {p['noise_multiplier']:.6g} (q = {q:.4g})"
    except ValueError as e:
        raise ConfigError(f"privacy.{e}") from None
    if eps is not None and spent > eps * (1 + 1e-9) and not math.isinf(eps):
        raise ConfigError(f"algorithm.rounds: {rounds} rounds at {given} spend ε = {spent:.6g} "
                          f"> privacy.epsilon {eps:g} (δ = {delta:g}, {acc} accountant); lower "
                          f"algorithm.rounds, raise the noise, or leave noise_multiplier null "
                          f"to calibrate it")
    return p


def with_privacy(algorithm: Any, config: dict[str, Any]) -> Any:
    """``algorithm`` made private as ``config["privacy"]`` says: a FedAvg-family algorithm
    wrapped into :class:`~fedopt.privacy.dp_fedavg.DPFedAvg`; diff2 (which reads the section
    itself) and runs without the section as they are. None stays None (nothing built)."""
    p = config.get("privacy")
    if algorithm is None or p is None or p["mechanism"] != "dp_fedavg":
        return algorithm
    from fedopt.privacy.dp_fedavg import DPFedAvg

    p = resolve_privacy(config, algorithm.num_clients)
    try:
        return DPFedAvg(algorithm, p["clip"], p["noise_multiplier"],
                        clip_per_layer=p["clip_per_layer"], noise=p["noise"], delta=p["delta"],
                        accountant=p["accountant"])
    except ValueError as e:
        raise ConfigError(str(e) if str(e).startswith("privacy.") else f"privacy.{e}") from None
