"""DIFF2-GD (Murata & Suzuki, ICML 2023; spec ``seed_extras.md`` §6, ``zeroth_order.md`` §5):
private gradient *differences* with periodic full restarts, record-level DP for every client.

All P clients take part in every round (the running sum needs them). Round r:

    restart (r mod T = 0):  v_r = Σ_p w_p u_p                     u_p: clipped (C1), noised (z1)
    difference (else):      v_r = v_{r−1} + Σ_p w_p u_p            u_p: clipped difference (C2, z2)
    x_{r+1} = ServerOpt(x_r, −v_r)        (sgd with lr η: x_r − η v_r, the paper's step)

with u_p each client's privatized mean gradient or mean gradient difference
(:class:`fedopt.privacy.diff2.Diff2Message`) and w_p = 1/P (``aggregation_weights: uniform``,
the paper's) or n_p/n (``num_samples``). x_{−1} = x_0, so round 0 is a restart. DP-GD is T = 1.
With no noise and no clipping, Σ of the differences telescopes and v_r = ∇F(x_r): DIFF2 is GD.

Server state: x_r, the server optimizer's state, and ``extra["diff2"] = {"v": v_{r−1},
"prev": x_{r−1}}``. The noise multipliers and clip norms come from the run's ``privacy:``
section (mechanism diff2; :mod:`fedopt.privacy.config` calibrates z1, z2 from (ε, δ), R, T and
the restart share ρ); every round's statistics carry ``epsilon_spent``.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from pydantic import Field

from fedopt.algorithms.base import AlgorithmSpec, ServerState, WrapsBase
from fedopt.algorithms.fedavg import FedAvg
from fedopt.algorithms.server_opt import ServerOptimizer
from fedopt.engine.contract import Executor, SharedStart
from fedopt.engine.program import LocalProgram
from fedopt.optim import make as make_optimizer
from fedopt.privacy.diff2 import Diff2Message, pair_start, split_pair
from fedopt.schema import ConfigError

STATE_KEY = "diff2"


class DIFF2(WrapsBase):
    """DIFF2-GD's server (module docstring). ``restart_period`` T; ``clip``/``clip_diff``
    C1/C2 (None: no clipping, only without noise); ``z1``/``z2`` the noise multipliers;
    ``delta``/``accountant`` for ``epsilon_spent``. ValueError naming the field otherwise."""

    def __init__(self, counts: np.ndarray, restart_period: int, clip: float | None,
                 clip_diff: float | None, z1: float = 0.0, z2: float = 0.0, *,
                 server_optimizer: ServerOptimizer | None = None,
                 aggregation_weights: str = "uniform", seed: int = 0, delta: float = 1e-5,
                 accountant: str = "rdp"):
        counts = np.asarray(counts, dtype=np.int64)
        if aggregation_weights == "unbiased":
            raise ValueError("aggregation_weights: diff2 has every client in every round; use "
                             "uniform (the paper's 1/P) or num_samples")
        self.base = FedAvg(counts, len(counts), server_optimizer, aggregation_weights, seed=seed)
        self.message = Diff2Message(int(restart_period), clip, clip_diff, float(z1), float(z2))
        self.restart_period = int(restart_period)
        self.delta = float(delta)
        self.accountant = accountant
        self.client_optimizer = make_optimizer("sgd", lr=1.0)

    def local_program(self) -> LocalProgram:
        """Clients compute the DIFF2 message (one full-batch step of SGD with lr 1)."""
        return LocalProgram(oracle=self.message)

    def is_restart(self, round_idx: int) -> bool:
        return round_idx % self.restart_period == 0

    def epsilon_spent(self, rounds: int) -> float:
        """ε of the first ``rounds`` rounds' messages (the accountant's; inf without noise)."""
        from fedopt.privacy import accounting

        r1 = accounting.diff2_rounds(rounds, self.restart_period)[0]
        m = self.message
        return accounting.ledger_epsilon(((m.z1, 1.0, r1), (m.z2, 1.0, int(rounds) - r1)),
                                         self.delta, self.accountant)

    def run_round(self, state: ServerState, executor: Executor, optimizer: Any = None
                  ) -> tuple[ServerState, dict[str, Any]]:
        """Every client's message from (x_r, x_{r−1}); v_r; the server step with −v_r.
        ``optimizer`` (the run's client optimizer) is not used: a DIFF2 job is one SGD step
        with lr 1."""
        r = state.round
        mem = state.extra.get(STATE_KEY) or {"prev": state.params, "v": None}
        ids = np.arange(self.num_clients)
        out = executor.run_jobs(SharedStart(pair_start(state.params, mem["prev"])), ids,
                                np.full(len(ids), r, dtype=np.int64), self.base.weights(ids),
                                optimizer=self.client_optimizer)
        if out.updates != len(ids):
            raise ValueError(f"diff2: round {r + 1} kept {out.updates} of {len(ids)} clients; "
                             f"the running sum needs every client (on_nonfinite: error)")
        step, _ = split_pair(out.delta_sum)                     # −Σ_p w_p u_p
        v = {k: -d for k, d in step.items()} if self.is_restart(r) or mem["v"] is None \
            else {k: mem["v"][k] - d for k, d in step.items()}
        new = self.base.apply(state, {k: -t for k, t in v.items()})
        state.extra[STATE_KEY] = {"prev": state.params, "v": v}
        stats = {"local_loss": out.loss_sum / max(out.weight_sum, 1e-300),
                 "updates": out.updates, "samples": out.samples,
                 "epsilon_spent": self.epsilon_spent(r + 1)}
        return dataclasses.replace(new, extra=state.extra), stats


def _build(cfg: dict[str, Any], counts: np.ndarray, seed: int,
           server_optimizer: ServerOptimizer, config: dict[str, Any]) -> DIFF2:
    from fedopt.privacy.config import resolve_privacy

    client = config.get("client") or {}
    if client.get("local_steps") != 1:
        raise ConfigError("client.local_steps: diff2's clients send one full-batch message per "
                          "round: set client.local_steps: 1")
    if cfg["clients_per_round"] != len(counts):
        raise ConfigError(f"algorithm.clients_per_round: diff2 needs every client in every "
                          f"round (the running sum of differences; spec pitfall): set it to "
                          f"the number of clients, {len(counts)}")
    batch = client.get("batch_size")
    if batch is not None and batch < int(np.max(counts)):
        raise ConfigError(f"client.batch_size: diff2 computes full-batch gradients; it must be "
                          f"at least the largest client's rows ({int(np.max(counts))}), got "
                          f"{batch}")
    priv = resolve_privacy(config, len(counts))
    if priv is None or priv["mechanism"] != "diff2":
        raise ConfigError("privacy.mechanism: algorithm.name: diff2 needs a privacy section "
                          "with mechanism: diff2 (clip, clip_diff, epsilon; epsilon: .inf for "
                          "no noise)")
    return DIFF2(counts, cfg["restart_period"], priv["clip"], priv["clip_diff"],
                 priv["noise_multiplier"], priv["noise_multiplier_diff"],
                 server_optimizer=server_optimizer,
                 aggregation_weights=cfg["aggregation_weights"], seed=seed,
                 delta=priv["delta"], accountant=priv["accountant"])


def _specs() -> dict[str, AlgorithmSpec]:
    from fedopt.algorithms.base import schema
    from fedopt.schema import PositiveInt

    doc = ("DIFF2-GD (Murata & Suzuki 2023): private gradient differences with restarts every "
           "restart_period rounds; full participation; privacy: {mechanism: diff2, ...}")
    fields = {"restart_period": (PositiveInt, Field(10, description="T: a full (restart) "
                                                                    "gradient every T rounds; "
                                                                    "1 = DP-GD"))}
    return {"diff2": AlgorithmSpec(schema("diff2", doc, **fields), {"name": "sgd", "lr": 1.0},
                                   _build, doc)}


ALGORITHM_SPECS = _specs()
