"""SCAFFOLD (Karimireddy et al., ICML 2020): local steps corrected by control variates.

State (federated.md §4.1): server model x, server control variate c, and one control variate
c_i per client (zeros until the client first takes part; a server-side :class:`ClientTable`).
Round t with sampled clients S:

    y_{i,0} = x;   y_{i,k+1} = LocalOpt(y_{i,k}, g_i(y_{i,k}; ξ) − c_i + c)       (u_i steps)
    option I : c_i⁺ = ∇F_i(x)                        (full local gradient at the server model)
    option II: c_i⁺ = c_i − c + (x − y_{i,u_i}) / (u_i · η_l)
    x ← ServerOpt(x, Σ_{i∈S} w_i (y_{i,u_i} − x))            (plain SGD, η_g = 1: the paper's)
    c ← c + Σ_{i∈S} p_i (c_i⁺ − c_i)

u_i is client i's **actual** number of local steps (E·⌈n_i/B⌉ in epochs mode) and η_l the
client learning rate of this round (after decay). The correction −c_i + c uses the values from
*before* this round's update. c is kept equal to Σ_{j=1..N} p_j c_j, with p_j = 1/N for
``aggregation_weights: uniform`` (the paper's 1/N, not 1/m) and p_j = n_j/n otherwise (the
weights of the objective F = Σ_j p_j F_j); w_i are FedAvg's aggregation weights.

Option II assumes the local optimizer's displacement is η_l times an average gradient (plain SGD,
possibly with weight decay, whose effect it absorbs); with adaptive local optimizers prefer
option I. Option I costs one extra full pass over each sampled client's rows at x.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fedopt.algorithms.base import AlgorithmSpec, Params, ServerState
from fedopt.algorithms.client_state import ClientTable, population_weights
from fedopt.algorithms.fedavg import FedAvg, dropped_stats, local_loss
from fedopt.algorithms.server_opt import ServerOptimizer
from fedopt.engine.contract import Executor, RoundOutput
from fedopt.engine.program import LocalProgram

OPTIONS = ("I", "II")
TABLE_KEY = "scaffold_c"


class Scaffold(FedAvg):
    """SCAFFOLD server logic over any :class:`~fedopt.engine.contract.Executor` (option I asks
    it for ``full_gradients``)."""

    def __init__(self, counts: np.ndarray, clients_per_round: int,
                 server_optimizer: ServerOptimizer | None = None,
                 aggregation_weights: str = "num_samples", seed: int = 0, option: str = "II"):
        super().__init__(counts, clients_per_round, server_optimizer, aggregation_weights, seed)
        if option not in OPTIONS:
            raise ValueError(f"option: one of {OPTIONS}, got {option!r}")
        self.option = option
        self.population = population_weights(self.counts, aggregation_weights)

    def init(self, params: Params) -> ServerState:
        state = super().init(params)
        table = ClientTable.create(state.params, self.population,
                                   capacity=self.clients_per_round)
        state.clients[TABLE_KEY] = table.data
        return state

    def local_program(self) -> LocalProgram:
        return LocalProgram()

    def run_round(self, state: ServerState, executor: Executor, optimizer: Any = None
                  ) -> tuple[ServerState, dict[str, Any]]:
        """One SCAFFOLD round (see the module docstring)."""
        ids = self.sample_clients(state.round)
        weights = self.weights(ids)
        table = ClientTable(state.clients[TABLE_KEY])
        c = table.mean
        c_i = table.gather(ids)
        correction = {k: c[k].unsqueeze(0) - c_i[k] for k in c_i}
        x = state.params
        lr = client_lr(executor, optimizer) if self.option == "II" else None

        def new_control(out: RoundOutput, pos: np.ndarray) -> Params:
            """c_i⁺ of clients ids[pos] (rows of ``out`` in that order)."""
            if self.option == "I":
                return executor.full_gradients(x, ids[pos])
            scale = 1.0 / (torch.as_tensor(out.steps, dtype=torch.float64) * lr)
            new = {}
            for k, y in out.local_params.items():
                s = scale.to(device=y.device, dtype=y.dtype).view((-1,) + (1,) * (y.ndim - 1))
                old = c_i[k] if len(pos) == len(ids) else c_i[k][_rows(pos, y)]
                new[k] = old - c[k].unsqueeze(0) + (x[k].unsqueeze(0) - y) * s
            return new

        out, pos, new_c = self.run_clients(state, executor, ids, weights, optimizer,
                                           keep_local=self.option == "II", correction=correction,
                                           client_state=new_control, what="its control variate")
        drift = 0.0
        if len(pos):
            old_c = c_i if len(pos) == len(ids) else {k: v[_rows(pos, v)] for k, v in c_i.items()}
            drift = sum(float((new_c[k] - old_c[k]).pow(2).sum()) for k in new_c)
            table.put(ids[pos], new_c, old=old_c)
        stats = {"local_loss": local_loss(out),
                 "control_update_norm": (drift / max(len(pos), 1)) ** 0.5,
                 "updates": out.updates, "samples": out.samples,
                 **dropped_stats(state, executor)}
        return self.apply(state, out.delta_sum if out.updates else None), stats


def _rows(pos: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(pos, dtype=torch.int64, device=like.device)


# -- what SCAFFOLD needs from the executor ---------------------------------------------------

def client_lr(executor: Executor, optimizer: Any) -> float:
    """η_l of this round: the optimizer passed to ``run_round`` or the executor's default."""
    opt = optimizer if optimizer is not None else executor.optimizer
    lr = getattr(opt, "lr", None)
    if lr is None:
        raise TypeError("SCAFFOLD option II needs a local optimizer with an 'lr'")
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1:
            raise TypeError("SCAFFOLD option II needs one scalar client learning rate")
        lr = lr.item()
    return float(lr)


def _build(cfg: dict[str, Any], counts: np.ndarray, seed: int,
           server_optimizer: ServerOptimizer, config: dict[str, Any]) -> Scaffold:
    return Scaffold(counts, cfg["clients_per_round"], server_optimizer,
                    cfg["aggregation_weights"], seed=seed, option=cfg["option"])


def _specs() -> dict[str, AlgorithmSpec]:
    from typing import Literal

    from pydantic import Field

    from fedopt.algorithms.base import schema

    option = Field("II", description="client control-variate update: 'I' (∇F_i at the server "
                                     "model) or 'II' (c_i − c + (x − y_i)/(u_i η_l))")
    return {"scaffold": AlgorithmSpec(schema("scaffold", option=(Literal[OPTIONS], option)),
                                      {"name": "sgd", "lr": 1.0}, _build,
                                      "SCAFFOLD (control variates)")}


ALGORITHM_SPECS = _specs()
