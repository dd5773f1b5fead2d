"""FedAvg (McMahan et al. 2017) with a pluggable server optimizer (the FedOpt family).

Round t: sample m clients S_t uniformly without replacement; each runs local training from
x_t and returns Δ_i = y_{i,K} − x_t; the server forms

    Δ_t = Σ_{i∈S_t} w_i Δ_i,   w_i = n_i / Σ_{j∈S_t} n_j   ("num_samples", default)
                               w_i = 1/m                  ("uniform")
                               w_i = (N/m) · n_i/n        ("unbiased": E_S[Δ_t] = Σ_i p_i Δ_i)

and applies the server optimizer to Δ_t (x_{t+1} = x_t + η Δ_t for plain FedAvg).
FedProx (Li et al. 2020) is FedAvg whose clients add μ(y − x_t) to every local gradient; that
lives in the clients' local program (``LocalProgram.prox_mu``).

Server state — global params, server-optimizer state, round — is one :class:`ServerState`;
client sampling is a pure function of (seed, round), so the state needs no RNG object to resume.

Non-finite values (:mod:`fedopt.engine.nonfinite`): clients whose result — or whose per-client
state (SCAFFOLD's c_i⁺, FedDyn's H_i) — is NaN/±inf stop the run (``on_nonfinite: error``) or are
left out as if they had not returned (``drop``: weights renormalised over the others, their state
not stored, ``nonfinite_dropped`` counted); a round that keeps no client leaves the model and the
server-optimizer state unchanged. A server step whose new parameters or optimizer state are not
finite raises :class:`~fedopt.engine.nonfinite.NonFiniteError` under either policy.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
from pydantic import Field

from fedopt.algorithms.base import AlgorithmSpec, Params, ServerState
from fedopt.algorithms.client_state import population_weights
from fedopt.algorithms.server_opt import ServerOptimizer
from fedopt.engine.contract import Executor, RoundOutput, SharedStart
from fedopt.engine.executor import drop_scale
from fedopt.engine.program import LocalProgram
from fedopt.engine.nonfinite import (DROPPED_KEY, check_server_state, client_error, count_dropped,
                                     finite_rows)
from fedopt.rng import STREAM_SAMPLING, round_generator
AGGREGATION_WEIGHTS = ("num_samples", "uniform", "unbiased")


class FedAvg:
    """Synchronous FedAvg server logic: sampling, aggregation weights, server update.

    ``prox_mu > 0`` makes it FedProx (the clients' proximal term)."""

    def __init__(self, counts: np.ndarray, clients_per_round: int,
                 server_optimizer: ServerOptimizer | None = None,
                 aggregation_weights: str = "num_samples", seed: int = 0,
                 prox_mu: float = 0.0):
        self.counts = np.asarray(counts, dtype=np.int64)
        self.num_clients = len(self.counts)
        if not 1 <= clients_per_round <= self.num_clients:
            raise ValueError(f"clients_per_round: must be in [1, {self.num_clients}], "
                             f"got {clients_per_round}")
        if aggregation_weights not in AGGREGATION_WEIGHTS:
            raise ValueError(f"aggregation_weights: one of {AGGREGATION_WEIGHTS}, "
                             f"got {aggregation_weights!r}")
        self.clients_per_round = int(clients_per_round)
        self.server_optimizer = server_optimizer or ServerOptimizer()
        self.aggregation_weights = aggregation_weights
        self.seed = seed
        self.prox_mu = float(prox_mu)

    def init(self, params: Params) -> ServerState:
        params = {k: v.detach().clone() for k, v in params.items()}
        return ServerState(params=params, opt_state=self.server_optimizer.init(params))

    def sample_clients(self, round_idx: int) -> np.ndarray:
        """S_t: m distinct clients, uniform, a pure function of (seed, round); sorted ids."""
        if self.clients_per_round == self.num_clients:
            return np.arange(self.num_clients)
        rng = round_generator(self.seed, STREAM_SAMPLING, round_idx)
        return np.sort(rng.choice(self.num_clients, self.clients_per_round, replace=False))

    def weights(self, client_ids: np.ndarray) -> np.ndarray:
        """Aggregation weights w_i of the sampled clients (float64)."""
        n = self.counts[client_ids].astype(np.float64)
        if self.aggregation_weights == "num_samples":
            return n / n.sum()
        if self.aggregation_weights == "uniform":
            return np.full(len(client_ids), 1.0 / len(client_ids))
        return (self.num_clients / len(client_ids)) * population_weights(
            self.counts, "unbiased")[client_ids]

    def apply(self, state: ServerState, delta: Params | None) -> ServerState:
        """x_{t+1} = ServerOpt(x_t, Δ_t); the round counter advances. ``delta`` None (no client
        kept) leaves the model and the server-optimizer state as they are.

        Raises :class:`~fedopt.engine.nonfinite.NonFiniteError` (and installs nothing) when the
        new parameters or server-optimizer state are not finite."""
        if delta is None:
            params, opt_state = state.params, state.opt_state
        else:
            params, opt_state = self.server_optimizer.step(state.params, delta, state.opt_state)
            check_server_state(state.round, params, opt_state)
        return dataclasses.replace(state, params=params, opt_state=opt_state,
                                   round=state.round + 1)

    def local_program(self) -> LocalProgram:
        """FedAvg's clients: the default program; FedProx's add the proximal term μ(y − x)."""
        return LocalProgram(prox_mu=self.prox_mu)

    def run_clients(self, state: ServerState, executor: Executor, ids: np.ndarray,
                    weights: np.ndarray, optimizer: Any = None, *, keep_local: bool = False,
                    correction: Params | None = None,
                    client_state: Callable[[RoundOutput, np.ndarray], Params] | None = None,
                    what: str = "its per-client state"
                    ) -> tuple[RoundOutput, np.ndarray, Params | None]:
        """``executor.run_jobs`` from the global model (a shared start, every job keyed by the
        round) with the executor's ``on_nonfinite`` policy applied to the clients' results
        *and* to their new per-client state.

        ``client_state(out, pos)`` gives the new state of clients ``ids[pos]`` (stacked, in that
        order) from the round output ``out`` of exactly those clients. Returns ``(out, pos, new)``:
        the output over the kept clients ``ids[pos]`` (pos: positions into ``ids``) and their new
        state (None without ``client_state``). A client whose state is non-finite although its
        model is finite raises (``error``) or is dropped (``drop``): the round is re-run without
        it, weights renormalised (:func:`~fedopt.engine.executor.drop_scale`) — local results do
        not depend on the other clients of a call, so this is the round it would have been.
        The drops are counted in ``state.extra`` (``nonfinite_dropped``).
        Raises :class:`~fedopt.engine.nonfinite.NonFiniteError` under ``on_nonfinite: error``.
        """
        policy = executor.on_nonfinite
        ids = np.asarray(ids, dtype=np.int64)
        weights = np.asarray(weights, dtype=np.float64)
        pos = np.arange(len(ids))
        w_run = weights
        while True:
            corr = (None if correction is None else
                    correction if len(pos) == len(ids) else
                    {k: v[_index(pos, v)] for k, v in correction.items()})
            out = executor.run_jobs(SharedStart(state.params), ids[pos],
                                    np.full(len(pos), state.round, dtype=np.int64), w_run,
                                    optimizer=optimizer, correction=corr, keep_local=keep_local)
            kept = out.kept(len(pos))
            new = None
            if client_state is not None and kept.any():
                new = client_state(out, pos)
                bad = kept & ~finite_rows(new).cpu().numpy()
                if bad.any():
                    if policy != "drop":
                        raise client_error(ids[pos][bad], state.round, what)
                    pos = pos[kept & ~bad]
                    w_run = weights[pos] * drop_scale(float(weights.sum()),
                                                      float(weights[pos].sum()))
                    continue
            if not kept.all():
                if new is not None:
                    new = {k: v[_index(np.flatnonzero(kept), v)] for k, v in new.items()}
                pos = pos[kept]
            break
        count_dropped(state.extra, len(ids) - len(pos))
        return out, pos, new

    def run_round(self, state: ServerState, executor: Executor, optimizer: Any = None
                  ) -> tuple[ServerState, dict[str, Any]]:
        """Sample S_t, run its clients, aggregate Σ w_i Δ_i, apply the server optimizer."""
        ids = self.sample_clients(state.round)
        weights = self.weights(ids)
        out, _, _ = self.run_clients(state, executor, ids, weights, optimizer)
        stats = {"local_loss": local_loss(out), "updates": out.updates, "samples": out.samples,
                 **dropped_stats(state, executor)}
        return self.apply(state, out.delta_sum if out.updates else None), stats


def _index(pos: np.ndarray, like: Any) -> Any:
    """``pos`` as an index for the stacked tensor ``like`` (on its device)."""
    import torch

    return torch.as_tensor(pos, dtype=torch.int64, device=like.device)


def local_loss(out: Any) -> float:
    """Σ_i w_i L_i / Σ_i w_i of a round output; NaN when no client was kept."""
    if not out.updates:
        return float("nan")
    return out.loss_sum / max(out.weight_sum, 1e-300)


def dropped_stats(state: ServerState, executor: Executor) -> dict[str, int]:
    """``{"nonfinite_dropped": n}`` (clients dropped for non-finite values so far, cumulative)
    under ``on_nonfinite: drop``; empty under ``error``."""
    if executor.on_nonfinite != "drop":
        return {}
    return {DROPPED_KEY: int(state.extra.get(DROPPED_KEY, 0))}


def _build(prox: bool):
    def build(cfg: dict[str, Any], counts: np.ndarray, seed: int,
              server_optimizer: ServerOptimizer, config: dict[str, Any]) -> FedAvg:
        return FedAvg(counts, cfg["clients_per_round"], server_optimizer,
                      cfg["aggregation_weights"], seed=seed,
                      prox_mu=cfg["mu"] if prox else 0.0)
    return build


def _specs() -> dict[str, AlgorithmSpec]:
    from fedopt.algorithms.base import Requirement, schema
    from fedopt.schema import NonNegativeFloat

    def rule(name: str) -> Requirement:
        return Requirement("name", lambda v: v == name, f"= {name!r}")

    momentum = Requirement("momentum", lambda v: isinstance(v, (int, float)) and v > 0, "> 0")
    plain = _build(False)
    return {
        "fedavg": AlgorithmSpec(schema("fedavg"), {"name": "sgd", "lr": 1.0}, plain,
                                "FedAvg (any server optimizer: the FedOpt family)"),
        "fedavgm": AlgorithmSpec(schema("fedavgm"), {"name": "sgd", "lr": 1.0, "momentum": 0.9},
                                 plain, "FedAvg with server momentum", (rule("sgd"), momentum)),
        "fedadam": AlgorithmSpec(schema("fedadam"), {"name": "adam", "lr": 0.1}, plain,
                                 "FedAdam", (rule("adam"),)),
        "fedyogi": AlgorithmSpec(schema("fedyogi"), {"name": "yogi", "lr": 0.1}, plain,
                                 "FedYogi", (rule("yogi"),)),
        "fedadagrad": AlgorithmSpec(schema("fedadagrad"), {"name": "adagrad", "lr": 0.1}, plain,
                                    "FedAdagrad", (rule("adagrad"),)),
        "fedprox": AlgorithmSpec(
            schema("fedprox", mu=(NonNegativeFloat, Field(0.01, description="proximal "
                                                                            "coefficient μ"))),
            {"name": "sgd", "lr": 1.0}, _build(True), "FedProx"),
    }


ALGORITHM_SPECS = _specs()
