"""FedCBO here: consensus-based optimization of the federated objective F = Σ_i p_i F_i, with the
particles on the server and the clients as black boxes (``../shared/algorithms/seed_extras.md``
§4.4, "global CBO over the federated objective"; CBO: :mod:`fedopt.zo.cbo`).

State: N particles X^1..X^N ∈ R^d (``ServerState.extra["cbo_particles"]``, flat [N, d]),
initialised as x_0 + s·ξ (s = ``init_std``, ξ keyed), and the model x_t = v_α, their consensus.
Round t:

1. sample S_t (M clients, FedAvg's sampling and ``aggregation_weights`` w_i);
2. every sampled client evaluates every particle on its minibatches
   (``client.local_steps``/``local_epochs``, batch size B; a zero-step-size job with the
   :class:`~fedopt.zo.cbo.LossOnly` oracle): L_i(X^j), N·u_i queries for u_i minibatches;
3. energies E^j = Σ_i w_i L_i(X^j) / Σ_i w_i; v_α = consensus(X, E); one CBO step
   X^j ← X^j − λ dt (X^j − v_α) + σ √dt D(X^j − v_α) ξ^j (isotropic or anisotropic, ξ keyed
   by (seed, round, particle, coordinate));
4. x_{t+1} = v_α of the energies just measured (the particles' consensus before the move).

Downlink per client: N·d floats; uplink: N scalars. Metrics rows carry cumulative ``queries``.
No gradient is computed anywhere. (Carrillo et al.'s clustered FedCBO, where each client is one
particle trained by local SGD and mixes its peers' models, is a different, first-order
algorithm and is not this one.)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from fedopt.algorithms.base import AlgorithmSpec, ServerState
from fedopt.algorithms.fedavg import FedAvg, dropped_stats
from fedopt.algorithms.fedzo import count_queries
from fedopt.algorithms.server_opt import ServerOptimizer
from fedopt.engine.contract import Executor
from fedopt.engine.nonfinite import check_server_state
from fedopt.engine.program import LocalProgram
from fedopt.optim import make
from fedopt.rng import keyed_normal
from fedopt.zo.cbo import NOISES, STREAM_CBO, LossOnly, cbo_step, consensus, keyed_noise
from fedopt.zo.estimators import _flatten, _unflatten

PARTICLES_KEY = "cbo_particles"
#: the init draw's step coordinate (rounds use 0, 1, ...)
_INIT = -1


class FedCBO(FedAvg):
    def __init__(self, counts: np.ndarray, clients_per_round: int,
                 server_optimizer: ServerOptimizer | None = None,
                 aggregation_weights: str = "uniform", seed: int = 0, *, particles: int = 50,
                 alpha: float = 50.0, lam: float = 1.0, sigma: float = 0.5, dt: float = 0.1,
                 noise: str = "anisotropic", init_std: float = 1.0):
        super().__init__(counts, clients_per_round, server_optimizer, aggregation_weights, seed)
        if noise not in NOISES:
            raise ValueError(f"noise: one of {NOISES}, got {noise!r}")
        self.particles, self.alpha, self.lam = int(particles), float(alpha), float(lam)
        self.sigma, self.dt, self.noise, self.init_std = float(sigma), float(dt), noise, \
            float(init_std)

    def init(self, params):
        state = super().init(params)
        flat = _flatten({k: v.unsqueeze(0) for k, v in state.params.items()})[0]
        d = flat.numel()
        z = keyed_normal(self.seed, STREAM_CBO, _INIT, np.arange(self.particles)[:, None],
                         np.arange(d)[None, :])
        state.extra[PARTICLES_KEY] = flat + self.init_std * torch.from_numpy(z).to(flat)
        return state

    def local_program(self) -> LocalProgram:
        return LocalProgram(oracle=LossOnly())

    def energies(self, state: ServerState, executor: Executor, ids: np.ndarray,
                 weights: np.ndarray) -> tuple[torch.Tensor, int, Any]:
        """E^j [N] (weighted mean over the sampled clients of their minibatch losses at X^j),
        the queries spent and the round output."""
        x = state.extra[PARTICLES_KEY]
        n = x.shape[0]
        like = {k: v.unsqueeze(0) for k, v in state.params.items()}
        starts = {k: v.repeat((len(ids),) + (1,) * (v.ndim - 1))
                  for k, v in _unflatten(x, like).items()}       # job (i, j) = client i, X^j
        job_ids = np.repeat(ids, n)
        out = executor.run_jobs(starts, job_ids, np.full(len(job_ids), state.round, np.int64),
                                np.repeat(weights, n), optimizer=make("sgd", lr=0.0),
                                keep_local=True)
        if len(out.nonfinite):
            raise FloatingPointError(f"fedcbo: non-finite losses of clients "
                                     f"{sorted(set(out.nonfinite.tolist()))} in round "
                                     f"{state.round}")
        losses = torch.as_tensor(out.local_loss, dtype=x.dtype, device=x.device).view(len(ids), n)
        w = torch.as_tensor(weights, dtype=x.dtype, device=x.device)
        return (w[:, None] * losses).sum(0) / w.sum(), int(np.sum(out.steps)), out

    def run_round(self, state: ServerState, executor: Executor, optimizer: Any = None
                  ) -> tuple[ServerState, dict[str, Any]]:
        ids = self.sample_clients(state.round)
        weights = self.weights(ids)
        energy, queries, out = self.energies(state, executor, ids, weights)
        x = state.extra[PARTICLES_KEY]
        v = consensus(x, energy, self.alpha)
        xi = keyed_noise(self.seed, state.round, (1,) + tuple(x.shape))[0].to(x)
        state.extra[PARTICLES_KEY] = cbo_step(x, v, xi, lam=self.lam, sigma=self.sigma,
                                              dt=self.dt, noise=self.noise)
        like = {k: p.unsqueeze(0) for k, p in state.params.items()}
        params = {k: p[0] for k, p in _unflatten(v[None], like).items()}
        check_server_state(state.round, params, state.opt_state)
        stats = {"local_loss": float(torch.softmax(-self.alpha * energy, 0) @ energy),
                 "energy_min": float(energy.min()), "updates": len(ids),
                 "samples": out.samples, "queries": count_queries(state, queries),
                 **dropped_stats(state, executor)}
        return dataclasses.replace(state, params=params, round=state.round + 1), stats


def _build(cfg: dict[str, Any], counts: np.ndarray, seed: int,
           server_optimizer: ServerOptimizer, config: dict[str, Any]) -> FedCBO:
    return FedCBO(counts, cfg["clients_per_round"], server_optimizer,
                  cfg["aggregation_weights"], seed=seed, particles=cfg["particles"],
                  alpha=cfg["alpha"], lam=cfg["lam"], sigma=cfg["sigma"], dt=cfg["dt"],
                  noise=cfg["noise"], init_std=cfg["init_std"])


def _specs() -> dict[str, AlgorithmSpec]:
    from fedopt.algorithms.base import schema
    from fedopt.algorithms.fedavg import AGGREGATION_WEIGHTS
    from fedopt.schema import NonNegativeFloat, PositiveFloat, PositiveInt

    fields = dict(
        aggregation_weights=(Literal[AGGREGATION_WEIGHTS], "uniform"),
        particles=(PositiveInt, Field(50, description="N, particles on the server")),
        alpha=(NonNegativeFloat, Field(50.0, description="α, the Gibbs weights' inverse "
                                                         "temperature")),
        lam=(NonNegativeFloat, Field(1.0, description="λ, drift toward the consensus")),
        sigma=(NonNegativeFloat, Field(0.5, description="σ, diffusion")),
        dt=(PositiveFloat, Field(0.1, description="dt, the Euler–Maruyama step")),
        noise=(Literal[NOISES], Field("anisotropic", description="isotropic or anisotropic")),
        init_std=(NonNegativeFloat, Field(1.0, description="particles start at x_0 + init_std·ξ")),
    )
    return {"fedcbo": AlgorithmSpec(
        schema("fedcbo", "FedCBO: consensus-based optimization of the federated objective "
                         "(server particles, clients evaluate)", **fields),
        {"name": "sgd", "lr": 1.0}, _build, "FedCBO (gradient-free, server particles)")}


ALGORITHM_SPECS = _specs()
