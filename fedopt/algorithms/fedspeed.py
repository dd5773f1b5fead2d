"""FedSpeed (Sun, Shen, Huang, Ding, Tao — ICLR 2023): prox-correction + gradient perturbation.

Hyperparameters, named as in the paper (federated.md §3.2):

    λ (``lam``, default 10)   prox strength; the local prox gradient is (1/λ)(w − x_t). The
                              reference code's ``--lamb`` multiplies (w − x_t) directly, so
                              ``lamb = 1/λ`` (its default 0.1 is λ = 10). ``lam: .inf`` drops it.
    ρ (``rho``, default 0.1)  radius of the extra gradient-ascent (perturbation) step
    α (``alpha``, default 1)  mixing of the plain and perturbed gradients (1 = the code's SAM)
    K                         the local interval: ``client.local_steps`` / ``client.local_epochs``
                              (the paper's setting: 5 epochs of B = 50, i.e. 50 steps)

Client i, round t, from w = x_t, with its prox-correction state H_i (= −λ ĝ_i of the paper,
the running sum of its past deltas; zeros until it first takes part):

    g1 = ∇f_i(w; ξ)
    e  = ρ g1/‖g1‖ ("code": normalised, global L2 norm)   or   ρ g1 ("paper")
    g2 = ∇f_i(w + e; ξ)                                    (same minibatch)
    g̃  = (1 − α) g1 + α g2
    w ← LocalOpt(w, g̃ + (1/λ)(w − x_t) + (1/λ) H_i)      (the last term: −ĝ_i, prox-correction)
    after K steps:  H_i ← H_i + (w_K − x_t)

Server (aggregation with its extra term):
    "code"  (default, ``correction_average: all``):     x_{t+1} = mean_P(w_K) + mean_all(H)
    "paper" (``correction_average: sampled``):          x_{t+1} = mean_P(w_K + H_i)
(weighted by the aggregation weights w_i and population weights p_j, see
:mod:`fedopt.algorithms.feddyn`; applied as a delta through the server optimizer, plain SGD with
η_g = 1 by default.) ``variant: code`` (default) = normalised perturbation + add-back over all
clients; ``variant: paper`` = unnormalised perturbation + add-back over the sampled clients;
``normalize_perturbation`` / ``correction_average`` override either piece.

Reductions (federated.md §3.7, §5): ρ = 0 is exactly FedDyn with α_FedDyn = 1/λ;
``prox_correction: false`` (no H, no add-back) gives FedProx(μ = 1/λ) + SAM, with ρ = 0 and
λ = ∞ plain FedAvg. The reference code's gradient clipping (norm 10, applied to the linearised
correction) is not reproduced: the prox gradient here is exactly (1/λ)(w − x_t) (the paper's
form); weight decay is the local optimizer's ``weight_decay``.

The local step is the engine's :class:`LocalTrainer` running the program of
:meth:`FedSpeed.local_program` (prox 1/λ, the :class:`~fedopt.engine.program.SAM` oracle with ρ,
α and the normalisation), so it runs on every executor.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from fedopt.algorithms.base import AlgorithmSpec
from fedopt.algorithms.feddyn import CORRECTION_AVERAGES, FedDyn
from fedopt.algorithms.server_opt import ServerOptimizer
from fedopt.engine.program import SAM, LocalProgram

VARIANTS = {"code": {"normalize_perturbation": True, "correction_average": "all"},
            "paper": {"normalize_perturbation": False, "correction_average": "sampled"}}


class FedSpeed(FedDyn):
    """FedSpeed server logic: :class:`FedDyn` with coef = 1/λ, SAM radius ρ and the variants."""

    def __init__(self, counts: np.ndarray, clients_per_round: int,
                 server_optimizer: ServerOptimizer | None = None,
                 aggregation_weights: str = "num_samples", seed: int = 0, *,
                 lam: float = 10.0, rho: float = 0.1, alpha: float = 1.0,
                 normalize_perturbation: bool = True, correction_average: str = "all",
                 prox_correction: bool = True):
        if not lam > 0:
            raise ValueError(f"lam: must be > 0, got {lam}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha: must be in [0, 1], got {alpha}")
        super().__init__(counts, clients_per_round, server_optimizer, aggregation_weights, seed,
                         coef=0.0 if math.isinf(lam) else 1.0 / lam, sam_rho=rho,
                         correction=prox_correction, correction_average=correction_average)
        self.lam = float(lam)
        self.rho = float(rho)
        self.alpha = float(alpha)
        self.normalize_perturbation = bool(normalize_perturbation)

    def local_program(self) -> LocalProgram:
        """FedDyn's program (prox 1/λ) with the SAM oracle (ρ, α, normalised or not)."""
        oracle = SAM(self.rho, self.alpha, self.normalize_perturbation)
        return dataclasses.replace(super().local_program(), oracle=oracle)


def _build(cfg: dict[str, Any], counts: np.ndarray, seed: int,
           server_optimizer: ServerOptimizer, config: dict[str, Any]) -> FedSpeed:
    preset = VARIANTS[cfg["variant"]]
    normalize = cfg["normalize_perturbation"]
    average = cfg["correction_average"]
    return FedSpeed(
        counts, cfg["clients_per_round"], server_optimizer, cfg["aggregation_weights"],
        seed=seed, lam=cfg["lam"], rho=cfg["rho"], alpha=cfg["alpha"],
        normalize_perturbation=preset["normalize_perturbation"] if normalize is None else normalize,
        correction_average=preset["correction_average"] if average is None else average,
        prox_correction=cfg["prox_correction"])


def _specs() -> dict[str, AlgorithmSpec]:
    from typing import Annotated, Literal, Optional

    from pydantic import Field

    from fedopt.algorithms.base import schema
    from fedopt.schema import Bool, Check, Float, InfFloat, NonNegativeFloat

    fields = {
        "lam": (Annotated[InfFloat, Check(lambda v: v > 0, "> 0")], Field(
            10.0, description="paper's λ: local prox gradient (1/λ)(w − x_t) and correction "
                              "(1/λ)H_i; the reference code's --lamb is 1/λ (0.1 ↔ λ = 10); "
                              ".inf: no prox term")),
        "rho": (NonNegativeFloat, Field(0.1, description="perturbation radius ρ (0: no ascent "
                                                         "step)")),
        "alpha": (Annotated[Float, Check(lambda v: 0 <= v <= 1, "in [0, 1]")], Field(
            1.0, description="quasi-gradient mixing α: (1 − α)g1 + α g2 (1 = the code's pure "
                             "SAM)")),
        "variant": (Literal[tuple(VARIANTS)], Field(
            "code", description="'code' (reference code, default): normalised perturbation, "
                                "add-back mean over all clients; 'paper': unnormalised, over "
                                "the sampled clients")),
        "normalize_perturbation": (Optional[Bool], Field(
            None, description="override the variant: e = ρ g/‖g‖ (true) or ρ g")),
        "correction_average": (Optional[Literal[CORRECTION_AVERAGES]], Field(
            None, description="override the variant: add back mean_all(H) ('all') or "
                              "mean_P(H_i) ('sampled')")),
        "prox_correction": (Bool, Field(
            True, description="false: no correction H_i and no server add-back "
                              "(FedProx(1/λ) + SAM; the ablation of §3.7)")),
    }
    return {"fedspeed": AlgorithmSpec(schema("fedspeed", **fields), {"name": "sgd", "lr": 1.0},
                                      _build,
                                      "FedSpeed (prox-correction + gradient perturbation)")}


ALGORITHM_SPECS = _specs()
