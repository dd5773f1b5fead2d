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
from fedopt.engine.program import LocalProgram

OPTIONS = ("I", "II")
TABLE_KEY = "scaffold_c"


class Scaffold(FedAvg):
    """SCAFFOLD server logic over any executor with ``run_round(..., keep_local, correction)``."""

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
        state.client_state[TABLE_KEY] = table.data
        return state

    def local_program(self) -> LocalProgram:
        return LocalProgram()

    def run_round(self, state: ServerState, executor: Any, optimizer: Any = None
                  ) -> tuple[ServerState, dict[str, Any]]:
        """One SCAFFOLD round (see the module docstring)."""
        ids = self.sample_clients(state.round)
        weights = self.weights(ids)
        table = ClientTable(state.client_state[TABLE_KEY])
        c = table.mean
        c_i = table.gather(ids)
        correction = {k: c[k].unsqueeze(0) - c_i[k] for k in c_i}
        x = state.params
        lr = client_lr(executor, optimizer) if self.option == "II" else None

        def new_control(out: Any, pos: np.ndarray) -> Params:
            """c_i⁺ of clients ids[pos] (rows of ``out`` in that order)."""
            if self.option == "I":
                return full_gradients(executor, x, ids[pos])
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

def client_lr(executor: Any, optimizer: Any) -> float:
    """η_l of this round: the optimizer passed to ``run_round`` or the trainer's default."""
    opt = optimizer if optimizer is not None else getattr(getattr(executor, "trainer", None),
                                                          "optimizer", None)
    lr = getattr(opt, "lr", None)
    if lr is None:
        raise TypeError("SCAFFOLD option II needs a local optimizer with an 'lr'")
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1:
            raise TypeError("SCAFFOLD option II needs one scalar client learning rate")
        lr = lr.item()
    return float(lr)


#: rows gathered per chunk of the full-gradient pass (clients × max rows)
FULL_GRADIENT_ROWS = 1 << 16


def full_gradients(executor: Any, params: Params, ids: np.ndarray) -> Params:
    """Stacked ∇F_i(x) = (1/n_i) Σ_{r∈D_i} ∇ℓ(x; r) for ``ids`` (SCAFFOLD option I).

    Uses the executor's own ``full_gradients(params, ids)`` when it has one (remote executors
    must); in-process it runs the trainer's batched gradient over each client's rows, padded
    to the largest client of the chunk with zero weights.
    """
    own = getattr(executor, "full_gradients", None)
    if own is not None:
        return own(params, ids)
    data, trainer = getattr(executor, "data", None), getattr(executor, "trainer", None)
    if data is None or trainer is None:
        raise TypeError(f"{type(executor).__name__} has no full_gradients(params, ids), "
                        "which SCAFFOLD option I needs")
    offsets = data.offsets.cpu().numpy()
    ids = np.asarray(ids, dtype=np.int64)
    n = offsets[ids + 1] - offsets[ids]
    chunk = max(1, FULL_GRADIENT_ROWS // max(int(n.max()), 1))
    parts: list[Params] = []
    dev = data.x.device
    for lo in range(0, len(ids), chunk):
        cid, cn = ids[lo:lo + chunk], n[lo:lo + chunk]
        width = int(cn.max())
        pos = np.arange(width)[None, :]
        rows = offsets[cid][:, None] + np.minimum(pos, cn[:, None] - 1)
        rows_t = torch.as_tensor(rows, device=dev)
        xb = data.x.index_select(0, rows_t.flatten()).view(rows.shape + tuple(data.x.shape[1:]))
        yb = data.y.index_select(0, rows_t.flatten()).view(rows.shape)
        wn = torch.as_tensor((pos < cn[:, None]) / cn[:, None], dtype=data.x.dtype, device=dev)
        y = {k: v.unsqueeze(0).expand((len(cid),) + v.shape) for k, v in params.items()}
        g, _ = trainer._batched_grad(y, xb, yb, wn)
        parts.append(g)
    return {k: torch.cat([p[k] for p in parts]) for k in params}


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
