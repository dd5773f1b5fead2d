"""FedDyn (Acar et al., ICLR 2021): dynamic regularization with per-client drift state.

In the "code" form used by both reference implementations (federated.md §4.2) each client keeps
H_i = Σ_s (θ_i^s − θ^s), the running sum of its own past deltas (zeros until it first takes
part; a server-side :class:`ClientTable`). Round t with sampled clients P:

    local gradient  ∇ℓ(w; ξ) + α (w − θ) + α H_i            (LocalOpt steps from w = θ)
    H_i ← H_i + (θ_i − θ)                                    (sampled clients only)
    θ ← ServerOpt(θ, Σ_{i∈P} w_i (θ_i − θ) + h̄),   h̄ = Σ_{j=1..N} p_j H_j

With plain SGD (η_g = 1) and normalised weights this is θ ← mean_P(θ_i) + mean_all(H), the
paper's θ ← mean_P(θ_i) − (1/α) h with h = −α h̄ (g_i = −α H_i is the paper's gradient state).
h̄ uses the H_i updated in this round. p_j = 1/N for ``aggregation_weights: uniform`` (the papers'
mean over all N clients) and n_j/n otherwise. At a fixed point with every client taking part,
θ_i = θ, local stationarity gives α H_i = −∇F_i(θ) and h̄ = 0, so Σ_j p_j ∇F_j(θ) = 0: θ is a
stationary point of F = Σ_j p_j F_j.

The model this server holds (and that is evaluated) is the cloud model θ, as in FL-Simulator;
the official FedDyn code reports the plain average of the active clients' models instead, and
scales α per client by its relative data size (here α is the same for every client).

:class:`FedDyn` also carries the knobs FedSpeed adds (SAM radius, switching the correction
machinery off, averaging the corrections over the sampled clients only); see
:mod:`fedopt.algorithms.fedspeed`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fedopt.algorithms.base import AlgorithmSpec, Params, ServerState
from fedopt.algorithms.client_state import ClientTable, population_weights
from fedopt.algorithms.fedavg import FedAvg, dropped_stats, local_loss
from fedopt.engine.contract import Executor, RoundOutput
from fedopt.engine.executor import drop_scale
from fedopt.engine.program import SAM, Autograd, LocalProgram
from fedopt.algorithms.server_opt import ServerOptimizer

CORRECTION_AVERAGES = ("all", "sampled")
TABLE_KEY = "dyn_h"


class FedDyn(FedAvg):
    """Dynamic-regularization server logic (FedDyn; the base of FedSpeed).

    ``coef`` is the coefficient that multiplies both (w − θ) and H_i in the local gradient
    (FedDyn's α; FedSpeed's 1/λ). ``correction=False`` drops H entirely (no local linear term,
    no server add-back: FedProx with μ = coef). ``correction_average="sampled"`` adds back
    Σ_{i∈P} w_i H_i instead of h̄ (identical under full participation with uniform weights).
    """

    def __init__(self, counts: np.ndarray, clients_per_round: int,
                 server_optimizer: ServerOptimizer | None = None,
                 aggregation_weights: str = "num_samples", seed: int = 0, *,
                 coef: float = 0.01, sam_rho: float = 0.0, correction: bool = True,
                 correction_average: str = "all"):
        super().__init__(counts, clients_per_round, server_optimizer, aggregation_weights, seed)
        if not coef >= 0:
            raise ValueError(f"coef: must be >= 0, got {coef}")
        if not sam_rho >= 0:
            raise ValueError(f"sam_rho: must be >= 0, got {sam_rho}")
        if correction_average not in CORRECTION_AVERAGES:
            raise ValueError(f"correction_average: one of {CORRECTION_AVERAGES}, "
                             f"got {correction_average!r}")
        self.coef = float(coef)
        self.sam_rho = float(sam_rho)
        self.correction = bool(correction)
        self.correction_average = correction_average
        self.population = population_weights(self.counts, aggregation_weights)

    def init(self, params: Params) -> ServerState:
        state = super().init(params)
        if self.correction:
            table = ClientTable.create(state.params, self.population,
                                       capacity=self.clients_per_round)
            state.clients[TABLE_KEY] = table.data
        return state

    def local_program(self) -> LocalProgram:
        """Clients add α(y − x) (the prox part of FedDyn's linear-quadratic penalty; the linear
        part −h_i is the per-job correction); FedSpeed's ρ > 0 makes the oracle SAM."""
        oracle = SAM(self.sam_rho) if self.sam_rho > 0 else Autograd()
        return LocalProgram(prox_mu=self.coef, oracle=oracle)

    def run_round(self, state: ServerState, executor: Executor, optimizer: Any = None
                  ) -> tuple[ServerState, dict[str, Any]]:
        """One round (see the module docstring)."""
        ids = self.sample_clients(state.round)
        weights = self.weights(ids)
        if not self.correction:
            out, _, _ = self.run_clients(state, executor, ids, weights, optimizer)
            return (self.apply(state, out.delta_sum if out.updates else None),
                    _stats(out, 0.0, state, executor))
        table = ClientTable(state.clients[TABLE_KEY])
        h_old = table.gather(ids)
        corr = {k: self.coef * v for k, v in h_old.items()} if self.coef > 0 else None
        x = state.params

        def new_h(out: RoundOutput, pos: np.ndarray) -> Params:
            """H_i + (θ_i − θ) of clients ids[pos] (rows of ``out`` in that order)."""
            return {k: _take(h_old[k], pos, len(ids)) + (y - x[k].unsqueeze(0))
                    for k, y in out.local_params.items()}

        out, pos, h_new = self.run_clients(state, executor, ids, weights, optimizer,
                                           keep_local=True, correction=corr,
                                           client_state=new_h, what="its drift state H_i")
        if not len(pos):           # no client kept: nothing stored, no server step
            return self.apply(state, None), _stats(out, 0.0, state, executor)
        h_kept_old = {k: _take(v, pos, len(ids)) for k, v in h_old.items()}
        table.put(ids[pos], h_new, old=h_kept_old)
        if self.correction_average == "all":
            add_back = table.mean
        else:   # Σ w_i H_i over the kept clients, weights renormalised as in the aggregate
            wk = weights[pos] * drop_scale(float(np.sum(weights)), float(np.sum(weights[pos])))
            w = torch.as_tensor(wk)
            add_back = {k: torch.tensordot(w.to(device=v.device, dtype=v.dtype), v, dims=1)
                        for k, v in h_new.items()}
        delta = {k: out.delta_sum[k] + add_back[k] for k in x}
        norm = sum(float(v.pow(2).sum()) for v in add_back.values()) ** 0.5
        return self.apply(state, delta), _stats(out, norm, state, executor)


def _take(v: torch.Tensor, pos: np.ndarray, n: int) -> torch.Tensor:
    """Rows ``pos`` of the stacked [n, ...] ``v`` (``v`` itself when ``pos`` is all of them)."""
    if len(pos) == n:
        return v
    return v.index_select(0, torch.as_tensor(pos, dtype=torch.int64, device=v.device))


def _stats(out: RoundOutput, add_back_norm: float, state: ServerState,
           executor: Executor) -> dict[str, Any]:
    return {"local_loss": local_loss(out), "correction_norm": add_back_norm,
            "updates": out.updates, "samples": out.samples, **dropped_stats(state, executor)}


def _build(cfg: dict[str, Any], counts: np.ndarray, seed: int,
           server_optimizer: ServerOptimizer, config: dict[str, Any]) -> FedDyn:
    return FedDyn(counts, cfg["clients_per_round"], server_optimizer, cfg["aggregation_weights"],
                  seed=seed, coef=cfg["alpha"])


def _specs() -> dict[str, AlgorithmSpec]:
    from pydantic import Field

    from fedopt.algorithms.base import schema
    from fedopt.schema import PositiveFloat

    alpha = Field(0.01, description="dynamic-regularization coefficient α (local gradient "
                                    "∇ℓ + α(w − θ) + α H_i); official CIFAR-10 value 0.01")
    return {"feddyn": AlgorithmSpec(schema("feddyn", alpha=(PositiveFloat, alpha)),
                                    {"name": "sgd", "lr": 1.0}, _build,
                                    "FedDyn (dynamic regularization)")}


ALGORITHM_SPECS = _specs()
