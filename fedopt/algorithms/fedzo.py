"""FedZO (Fang, Yu, Jiang, Shi, Jones, Zhou, "Communication-Efficient Stochastic Zeroth-Order
Optimization for Federated Learning", IEEE TSP 70, 2022; arXiv 2201.09531): FedAvg whose clients
can only evaluate their loss.

Round t: sample M of the N devices uniformly without replacement (S_t); each runs H local
ZO-SGD steps from x_t on fresh minibatches ξ (``client.local_steps``, ``client.batch_size`` b1),

    y ← y − η ĝ(y; ξ),   ĝ = (d / (μ b2)) Σ_{j=1..b2} (F_i(y + μ u_j; ξ) − F_i(y; ξ)) u_j

(u_j uniform on the unit sphere: ``client.estimator: {name: sphere, directions: b2, mu: μ}``,
any law of :mod:`fedopt.zo.estimators` plugs in), and the server averages the deltas,
x_{t+1} = x_t + (1/M) Σ_{i∈S_t} Δ_i (``aggregation_weights: uniform``, the authors' code; the
server optimizer applies as in FedAvg). The clients' program is FedAvg's with the
:class:`~fedopt.zo.estimators.ZerothOrder` oracle — the same engine, another gradient oracle.

Queries: every function evaluation F_i(·; ξ) is one query (a minibatch evaluation counts once,
``../shared/algorithms/zeroth_order.md`` §0): u_i·(b2 + 1) per client and round with u_i local
steps (forward differences; 2·b2 central). Metrics rows carry ``queries``, cumulative over all
clients and rounds, kept in ``ServerState.extra["zo_queries"]`` (checkpointed).

Paper defaults (authors' scripts): N = 10, M = N, H = 20, b1 = 25, b2 = 20, μ = 1e-3, η = 1e-3.

**AirComp-FedZO** (``aircomp_snr_db``), as the authors' code simulates it: each round, devices
with channel gain |h_i| ≥ 0.8 (h_i = a + jb, a, b ~ N(0, 0.5²), redrawn until one qualifies)
transmit, Δ̄ = (1/|S|) Σ_{i∈S} Δ_i, and the receiver adds N(0, σ_n² I) with
σ_n = (1/|S|) √(P_max / (SNR_lin · h_min · d)), P_max = max_i ‖Δ_i‖², h_min = min_{i∈S} |h_i|
(no noise at SNR ≥ 50 dB). ``clients_per_round`` is then unused. Rows gain ``aircomp_selected``.

The same swap of oracle works for other algorithms: with ``client.estimator`` given, the FedAvg
family, FedProx, SCAFFOLD (option II), FedDyn and the asynchronous family on the virtual clock
run zeroth-order clients (:func:`with_estimator`, applied when a run builds its algorithm).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal, Optional

import numpy as np
import torch
from pydantic import Field

from fedopt.algorithms.base import AlgorithmSpec, ServerState
from fedopt.algorithms.fedavg import AGGREGATION_WEIGHTS, FedAvg, dropped_stats, local_loss
from fedopt.algorithms.server_opt import ServerOptimizer
from fedopt.engine.contract import Executor
from fedopt.engine.program import Autograd, LocalProgram
from fedopt.schema import ConfigError
from fedopt.rng import STREAM_AIRCOMP, keyed_normal
from fedopt.zo.estimators import READ_ESTIMATOR, ZerothOrder, _unflatten

QUERIES_KEY = "zo_queries"


def count_queries(state: ServerState, n: int) -> int:
    """Add n queries to the cumulative count in ``state.extra``; returns the new total."""
    total = int(state.extra.get(QUERIES_KEY, 0)) + int(n)
    state.extra[QUERIES_KEY] = total
    return total


class FedZO(FedAvg):
    """FedAvg's sampling, weights and server step; clients run ``oracle`` (module docstring)."""

    reads_estimator = True

    def __init__(self, counts: np.ndarray, clients_per_round: int,
                 server_optimizer: ServerOptimizer | None = None,
                 aggregation_weights: str = "uniform", seed: int = 0,
                 oracle: ZerothOrder | None = None):
        super().__init__(counts, clients_per_round, server_optimizer, aggregation_weights, seed)
        self.oracle = oracle if oracle is not None else ZerothOrder()

    def local_program(self) -> LocalProgram:
        return LocalProgram(oracle=self.oracle)

    aircomp_snr_db: float | None = None

    def run_round(self, state: ServerState, executor: Executor, optimizer: Any = None
                  ) -> tuple[ServerState, dict[str, Any]]:
        if self.aircomp_snr_db is not None:
            return self._aircomp_round(state, executor, optimizer)
        ids = self.sample_clients(state.round)
        out, _, _ = self.run_clients(state, executor, ids, self.weights(ids), optimizer)
        d = sum(v.numel() for v in state.params.values())
        total = count_queries(state, int(np.sum(out.steps)) * self.oracle.queries_per_step(d))
        stats = {"local_loss": local_loss(out), "updates": out.updates, "samples": out.samples,
                 "queries": total, **dropped_stats(state, executor)}
        return self.apply(state, out.delta_sum if out.updates else None), stats

    def _aircomp_round(self, state: ServerState, executor: Executor, optimizer: Any):
        """AirComp-FedZO as the authors' code simulates it (module docstring)."""
        ids, h_min = aircomp_select(self.seed, state.round, self.num_clients)
        w = np.full(len(ids), 1.0 / len(ids))
        out, pos, _ = self.run_clients(state, executor, ids, w, optimizer, keep_local=True)
        d = sum(v.numel() for v in state.params.values())
        total = count_queries(state, int(np.sum(out.steps)) * self.oracle.queries_per_step(d))
        delta = out.delta_sum
        if out.updates:
            base = {k: v.unsqueeze(0) for k, v in state.params.items()}
            sq = sum((v - base[k]).pow(2).flatten(1).sum(1) for k, v in out.local_params.items())
            p_max = float(sq[torch.isfinite(sq)].max())       # over the kept (finite) updates
            std = aircomp_noise_std(p_max, h_min, self.aircomp_snr_db, d, len(ids))
            if std > 0:
                noise = _unflatten(torch.as_tensor(keyed_normal(
                    self.seed, STREAM_AIRCOMP, state.round, 1, np.arange(d))).to(
                        next(iter(delta.values())))[None] * std, base)
                delta = {k: v + noise[k][0] for k, v in delta.items()}
        stats = {"local_loss": local_loss(out), "updates": out.updates, "samples": out.samples,
                 "queries": total, "aircomp_selected": len(ids),
                 **dropped_stats(state, executor)}
        return self.apply(state, delta if out.updates else None), stats


def aircomp_select(seed: int, round_idx: int, num_clients: int) -> tuple[np.ndarray, float]:
    """The authors' channel-quality selection: h_i = a + jb, a, b ~ N(0, 0.5²) keyed by
    (seed, round, attempt, client); S = {i : |h_i| ≥ 0.8}, redrawn until non-empty
    (P(|h| ≥ 0.8) = exp(−1.28) ≈ 0.278). Returns (sorted ids, min_{i∈S} |h_i|)."""
    attempt = 0
    while True:
        z = keyed_normal(seed, STREAM_AIRCOMP, round_idx, 0, attempt,
                         np.arange(num_clients)[:, None], np.arange(2)[None, :])
        h = 0.5 * np.hypot(z[:, 0], z[:, 1])
        sel = np.flatnonzero(h >= 0.8)
        if len(sel):
            return sel, float(h[sel].min())
        attempt += 1


def aircomp_noise_std(p_max: float, h_min: float, snr_db: float, d: int, m: int) -> float:
    """σ_n = (1/|S|) √(P_max / (SNR_lin · h_min · d)) (the code's h_min, not h_min²); 0 for
    SNR ≥ 50 dB (the code's noise-free switch)."""
    if snr_db >= 50:
        return 0.0
    return math.sqrt(p_max / (10 ** (snr_db / 10) * h_min * d)) / m


#: algorithms whose clients' whole computation is ``run_jobs`` with an autograd oracle, so
#: ``client.estimator`` can swap the oracle for a zeroth-order one (SCAFFOLD: option II only,
#: option I asks the executor for full gradients)
ZO_CLIENTS = frozenset({"fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedprox",
                        "scaffold", "feddyn", "fedavg_sync", "fedfix", "async_fedavg",
                        "fedasync", "fedbuff", "async_general"})


class CountingExecutor:
    """An executor seen through a query counter: every ``run_jobs`` adds Σ_j u_j · (queries per
    local step) to :attr:`queries` (jobs computed count, kept or not); everything else is the
    wrapped executor's."""

    def __init__(self, inner: Executor, per_step: int):
        self._inner, self.per_step, self.queries = inner, int(per_step), 0

    def run_jobs(self, *args: Any, **kwargs: Any):
        out = self._inner.run_jobs(*args, **kwargs)
        self.queries += int(np.sum(out.steps)) * self.per_step
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class ZerothOrderClients:
    """Algorithm ``inner`` (any of :data:`ZO_CLIENTS`: the FedAvg family, FedProx, SCAFFOLD II,
    FedDyn, the asynchronous family on the virtual clock) with zeroth-order clients: its local
    program with ``oracle`` in place of autograd, and ``queries`` (cumulative, in
    ``ServerState.extra``) in its rows. Everything else is ``inner``'s (attributes delegate).
    Queries of jobs run by the real-time Ray driver are not counted (it bypasses run_round)."""

    reads_estimator = True

    def __init__(self, inner: Any, oracle: ZerothOrder):
        self.__dict__["_inner"], self.__dict__["oracle"] = inner, oracle

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_inner"], name)

    def init(self, params):
        return self._inner.init(params)

    def local_program(self) -> LocalProgram:
        program = self._inner.local_program()
        if not isinstance(program.oracle, Autograd):
            raise ConfigError(f"client.estimator: this algorithm's clients use the "
                              f"{type(program.oracle).__name__} oracle, not plain gradients; a "
                              f"zeroth-order estimator cannot replace it")
        return dataclasses.replace(program, oracle=self.oracle)

    def run_round(self, state: ServerState, executor: Executor, optimizer: Any = None):
        d = sum(v.numel() for v in state.params.values())
        counting = CountingExecutor(executor, self.oracle.queries_per_step(d))
        new, stats = self._inner.run_round(state, counting, optimizer)
        stats["queries"] = count_queries(new, counting.queries)
        return new, stats


def with_estimator(name: str, algorithm: Any, config: dict[str, Any]) -> Any:
    """``algorithm`` as built for ``algorithm.name: name``, with zeroth-order clients when the
    run's ``client.estimator`` is given (:class:`ZerothOrderClients`); ConfigError naming
    ``client.estimator`` for an algorithm whose clients cannot take one, or
    ``executor.realtime`` (queries are not counted in real time)."""
    est = (config.get("client") or {}).get("estimator")
    if est is not None and (config.get("executor") or {}).get("realtime"):
        raise ConfigError("executor.realtime: real-time runs do not count zeroth-order queries "
                          "(the live driver bypasses the counter); run client.estimator on the "
                          "virtual clock (executor.realtime: false)")
    if est is None or name in READ_ESTIMATOR:
        return algorithm
    alg_cfg = config.get("algorithm") or {}
    if name not in ZO_CLIENTS or (name == "scaffold" and alg_cfg.get("option") == "I"):
        raise ConfigError(f"client.estimator: algorithm.name: {name} does not take an "
                          f"estimator (fedzo reads it; {', '.join(sorted(ZO_CLIENTS))} run "
                          f"zeroth-order clients with it, SCAFFOLD with option II; zo_ranksgd, "
                          f"fzoos and fedcbo have their own oracles)")
    if algorithm is None:
        return None
    wrapped = ZerothOrderClients(algorithm, ZerothOrder.from_config(est))
    wrapped.local_program()          # refuses a non-autograd oracle (FedSpeed's SAM) now
    return wrapped


def _build(cfg: dict[str, Any], counts: np.ndarray, seed: int,
           server_optimizer: ServerOptimizer, config: dict[str, Any]) -> FedZO:
    est = (config.get("client") or {}).get("estimator")
    try:
        oracle = ZerothOrder.from_config(est)
    except ValueError as e:
        raise ValueError(f"client.estimator.{e}") from None
    alg = FedZO(counts, cfg["clients_per_round"], server_optimizer, cfg["aggregation_weights"],
                seed=seed, oracle=oracle)
    alg.aircomp_snr_db = cfg.get("aircomp_snr_db")
    return alg


def _specs() -> dict[str, AlgorithmSpec]:
    from fedopt.algorithms.base import schema
    from fedopt.schema import Float

    weights = (Literal[AGGREGATION_WEIGHTS], Field(
        "uniform", description="FedZO averages the M deltas uniformly (authors' code)"))
    return {"fedzo": AlgorithmSpec(
        schema("fedzo", "FedZO: FedAvg with zeroth-order clients (client.estimator)",
               aggregation_weights=weights,
               aircomp_snr_db=(Optional[Float], Field(
                   None, description="AirComp-FedZO: receive SNR in dB (channel-quality "
                                     "selection replaces sampling; >= 50: no noise)"))),
        {"name": "sgd", "lr": 1.0}, _build, "FedZO (zeroth-order clients; client.estimator)")}


ALGORITHM_SPECS = _specs()
