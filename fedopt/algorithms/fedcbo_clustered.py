"""Clustered FedCBO (Carrillo, García Trillos, Li & Zhu, "FedCBO: Reaching Group Consensus in
Clustered Federated Learning through Consensus-based Optimization", JMLR 25(214), 2024;
``../shared/algorithms/seed_extras.md`` §4.4): every client is one particle, its own model θ_j.

Round t, for each sampled client j (``clients_per_round``):

1. local training from θ_j (``client.local_steps``/``local_epochs``, the client optimizer);
2. peer set A_j of ``peers`` = M other clients: uniform in round 0; later ⌊ε M⌋ uniform and the
   rest the top of the score S_j (ties by id), ε starting at ``epsilon`` and decreasing by 0.01
   per round while above 0.1;
3. client j evaluates each peer's model on its own data, L_j(θ_k) (one zero-step job per peer:
   its minibatch losses; M queries) and its own, L_j(θ_j);
4. μ_k = exp(−α L_j(θ_k)), m_j = Σ_k μ_k θ_k / Σ_k μ_k (own model excluded);
5. θ_j ← θ_j − λγ (θ_j − m_j);
6. S_j[k] += L_j(θ_j) − L_j(θ_k).

Peers' models are those at the start of the round (after their own training only when they
trained earlier in it: all sampled clients train first, then all mix). No noise (σ = 0, as the
authors' settings). Defaults: α = 10, λγ = 0.98, M = 10 (the paper: N = 1200, M = 200).
State: the stacked client models, scores and ε in ``ServerState.extra``; ``params`` is the
mean of the client models (what ``test_*`` rows evaluate: a clustered federation has no single
model, see :meth:`client_models`). Rows carry cumulative ``queries`` (peer evaluations).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from pydantic import Field

from fedopt.algorithms.base import AlgorithmSpec, ServerState
from fedopt.algorithms.fedavg import FedAvg, dropped_stats, local_loss
from fedopt.algorithms.fedzo import count_queries
from fedopt.algorithms.server_opt import ServerOptimizer
from fedopt.engine.contract import Executor
from fedopt.optim import make
from fedopt.rng import STREAM_PEERS, round_generator
from fedopt.zo.estimators import _flatten, _unflatten

KEY = "fedcbo_clustered"


class ClusteredFedCBO(FedAvg):
    def __init__(self, counts: np.ndarray, clients_per_round: int,
                 server_optimizer: ServerOptimizer | None = None,
                 aggregation_weights: str = "uniform", seed: int = 0, *, peers: int = 10,
                 alpha: float = 10.0, lam_gamma: float = 0.98, epsilon: float = 0.5):
        super().__init__(counts, clients_per_round, server_optimizer, aggregation_weights, seed)
        if not 1 <= peers <= self.num_clients - 1:
            raise ValueError(f"peers: must be in [1, {self.num_clients - 1}], got {peers}")
        self.peers, self.alpha = int(peers), float(alpha)
        self.lam_gamma, self.epsilon = float(lam_gamma), float(epsilon)

    def init(self, params):
        state = super().init(params)
        flat = _flatten({k: v.unsqueeze(0) for k, v in state.params.items()})[0]
        n = self.num_clients
        state.extra[KEY] = {"models": flat.expand(n, -1).clone(),
                            "scores": torch.zeros(n, n, dtype=torch.float64),
                            "epsilon": self.epsilon}
        return state

    def client_models(self, state: ServerState) -> dict[str, torch.Tensor]:
        """The clients' own models θ_j, stacked [N, ...]."""
        like = {k: v.unsqueeze(0) for k, v in state.params.items()}
        return _unflatten(state.extra[KEY]["models"], like)

    def select_peers(self, state: ServerState, j: int) -> np.ndarray:
        """A_j (module docstring, step 2), a pure function of (seed, round, j) and the scores."""
        st = state.extra[KEY]
        rng = round_generator(self.seed, STREAM_PEERS, state.round * self.num_clients + j)
        others = np.array([k for k in range(self.num_clients) if k != j])
        if state.round == 0:
            return np.sort(rng.choice(others, self.peers, replace=False))
        n_rand = int(np.floor(st["epsilon"] * self.peers))
        score = st["scores"][j, torch.as_tensor(others)].numpy()
        order = others[np.lexsort((others, -score))]
        top = order[:self.peers - n_rand]
        rest = np.setdiff1d(others, top)
        extra = rng.choice(rest, n_rand, replace=False) if n_rand else np.zeros(0, np.int64)
        return np.sort(np.concatenate([top, extra]).astype(np.int64))

    def run_round(self, state: ServerState, executor: Executor, optimizer: Any = None
                  ) -> tuple[ServerState, dict[str, Any]]:
        st = state.extra[KEY]
        ids = self.sample_clients(state.round)
        like = {k: v.unsqueeze(0) for k, v in state.params.items()}
        keys = np.full(len(ids), state.round, np.int64)
        starts = _unflatten(st["models"][torch.as_tensor(ids)], like)
        out = executor.run_jobs(starts, ids, keys, self.weights(ids), optimizer=optimizer,
                                keep_local=True)
        models = st["models"].clone()
        models[torch.as_tensor(ids)] = _flatten(out.local_params).to(models)
        # each sampled client rates its peers and itself on its own data (zero-step jobs)
        peer_sets = [self.select_peers(state, int(j)) for j in ids]
        rated = [np.concatenate([[j], a]) for j, a in zip(ids, peer_sets)]
        job_models = np.concatenate(rated)
        job_clients = np.repeat(ids, [len(r) for r in rated])
        ev = executor.run_jobs(_unflatten(models[torch.as_tensor(job_models)], like), job_clients,
                               np.full(len(job_clients), state.round, np.int64),
                               np.ones(len(job_clients)), optimizer=make("sgd", lr=0.0),
                               keep_local=True)
        losses = torch.as_tensor(ev.local_loss)
        new = models.clone()
        lo = 0
        for j, r in zip(ids, rated):
            own, peer = losses[lo], losses[lo + 1:lo + len(r)]
            lo += len(r)
            peer_idx = torch.as_tensor(r[1:])
            mu = torch.softmax(-self.alpha * peer, 0).to(models)
            m_j = mu @ models[peer_idx]
            new[int(j)] = models[int(j)] - self.lam_gamma * (models[int(j)] - m_j)
            st["scores"][int(j), peer_idx] += own - peer
        st["models"] = new
        if st["epsilon"] > 0.1:
            st["epsilon"] = max(st["epsilon"] - 0.01, 0.1)
        params = {k: v[0] for k, v in _unflatten(new.mean(0, keepdim=True), like).items()}
        queries = count_queries(state, int(np.sum(ev.steps)))
        stats = {"local_loss": local_loss(out), "updates": out.updates, "samples": out.samples,
                 "queries": queries, **dropped_stats(state, executor)}
        return dataclasses.replace(state, params=params, round=state.round + 1), stats


def _build(cfg: dict[str, Any], counts: np.ndarray, seed: int,
           server_optimizer: ServerOptimizer, config: dict[str, Any]) -> ClusteredFedCBO:
    return ClusteredFedCBO(counts, cfg["clients_per_round"], server_optimizer,
                           cfg["aggregation_weights"], seed=seed, peers=cfg["peers"],
                           alpha=cfg["alpha"], lam_gamma=cfg["lam_gamma"],
                           epsilon=cfg["epsilon"])


def _specs() -> dict[str, AlgorithmSpec]:
    from typing import Literal

    from fedopt.algorithms.base import schema
    from fedopt.algorithms.fedavg import AGGREGATION_WEIGHTS
    from fedopt.schema import NonNegativeFloat, PositiveInt, Probability

    fields = dict(
        aggregation_weights=(Literal[AGGREGATION_WEIGHTS], "uniform"),
        peers=(PositiveInt, Field(10, description="M, peers each client rates per round")),
        alpha=(NonNegativeFloat, Field(10.0, description="α of the Gibbs weights")),
        lam_gamma=(Probability, Field(0.98, description="λγ, the move toward the consensus")),
        epsilon=(Probability, Field(0.5, description="initial share of uniformly drawn peers")),
    )
    return {"fedcbo_clustered": AlgorithmSpec(
        schema("fedcbo_clustered", "Carrillo et al.'s clustered FedCBO: each client one "
                                   "particle", **fields),
        {"name": "sgd", "lr": 1.0}, _build, "clustered FedCBO (one model per client)")}


ALGORITHM_SPECS = _specs()
