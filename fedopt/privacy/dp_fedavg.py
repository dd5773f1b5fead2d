"""DP-FedAvg / DP-FedSGD (McMahan, Ramage, Talwar & Zhang, "Learning Differentially Private
Recurrent Language Models", ICLR 2018): user-level differential privacy for the FedAvg family.

Round t samples m of the N clients (rate q = m/N); each client i ∈ S_t trains locally as its
FedAvg algorithm says and returns its clipped update clip_C(Δ_i) (flat:
:class:`~fedopt.engine.program.ClipUpdateNorm`, or per layer: :class:`ClipPerLayer`). The server
releases the **fixed-denominator** estimator

    Δ̃_t = (1/m) Σ_{i∈S_t} clip_C(Δ_i) + N(0, (σ C / m)² I),     σ = the noise multiplier z,

(the denominator is the expected number of sampled clients qN = m, not the realised weight sum,
so one client moves the sum by at most C whatever was sampled) and applies the wrapped
algorithm's server optimizer to Δ̃_t (post-processing: plain FedAvg x_{t+1} = x_t + η Δ̃_t;
FedAvgM/FedAdam… are DP-FedAvgM/…). ``noise``:

* ``"central"``: the server adds N(0, (σC/m)² I), keyed by (seed, t) (trusted server);
* ``"local"``: each sampled client adds N(0, (σC/√m)² I) to its clipped update, keyed by
  (seed, t, i), so the average carries the same N(0, (σC/m)² I) (distributed DP: private against
  the server only together with secure aggregation, which fedopt does not simulate).

DP-FedSGD is the same with one local step (``client.local_steps: 1``). σ comes from
:mod:`fedopt.privacy.accounting` (the sampled Gaussian mechanism composed over the rounds);
every round's statistics carry ``epsilon_spent``, ε after the rounds done so far.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from fedopt.algorithms.base import ServerState, WrapsBase
from fedopt.algorithms.fedavg import FedAvg, dropped_stats, local_loss
from fedopt.engine.contract import Executor
from fedopt.engine.program import ClipUpdateNorm, LocalProgram
from fedopt.privacy import accounting
from fedopt.privacy.postprocess import ClipPerLayer, GaussianUpdateNoise, central_noise
from fedopt.schema import ConfigError

NOISE_PLACES = ("central", "local")
#: ``state.extra`` key of the noise multiplier the run's rounds were noised with (checked on
#: resume: a noise calibrated at run time, when the clients are known only from the data, is
#: not in the recorded config, and raising algorithm.rounds would recalibrate it)
NOISE_KEY = "dp_noise_multiplier"


class DPFedAvg(WrapsBase):
    """A :class:`~fedopt.algorithms.fedavg.FedAvg` algorithm made user-level private (module
    docstring). ``clip``: C > 0, or None (no clipping: only with ``noise_multiplier`` 0, the
    exact reduction to FedAvg with uniform weights); ``clip_per_layer``: C split equally over
    the tensors; ``noise_multiplier``: σ ≥ 0; ``noise``: ``"central"`` | ``"local"``;
    ``delta``/``accountant`` for ``epsilon_spent``. ValueError naming the field otherwise."""

    def __init__(self, base: FedAvg, clip: float | None, noise_multiplier: float, *,
                 clip_per_layer: bool = False, noise: str = "central", delta: float = 1e-5,
                 accountant: str = "rdp"):
        if type(base) is not FedAvg:
            raise ValueError(f"privacy.mechanism: dp_fedavg wraps the FedAvg family (fedavg, "
                             f"fedavgm, fedadam, fedyogi, fedadagrad, fedprox), not "
                             f"{type(base).__name__}")
        if clip is not None and (not clip > 0 or math.isinf(clip)):
            raise ValueError(f"privacy.clip: must be finite and > 0, got {clip!r}")
        if not noise_multiplier >= 0 or math.isinf(noise_multiplier):
            raise ValueError(f"privacy.noise_multiplier: must be finite and >= 0, got "
                             f"{noise_multiplier!r}")
        if clip is None and noise_multiplier > 0:
            raise ValueError("privacy.clip: noise needs a clip norm (the sensitivity)")
        if noise not in NOISE_PLACES:
            raise ValueError(f"privacy.noise: one of {NOISE_PLACES}, got {noise!r}")
        self.base = base
        self.clip = None if clip is None else float(clip)
        self.clip_per_layer = bool(clip_per_layer)
        self.noise_multiplier = float(noise_multiplier)
        self.noise = noise
        self.delta = float(delta)
        self.accountant = accountant
        self.m = base.clients_per_round
        self.sampling_rate = self.m / base.num_clients

    @property
    def aggregate_std(self) -> float:
        """σC/m: the standard deviation of the noise on each coordinate of Δ̃_t."""
        return 0.0 if self.clip is None else self.noise_multiplier * self.clip / self.m

    def local_program(self) -> LocalProgram:
        """The wrapped algorithm's program with ``clip`` (then, for local noise, the client's
        Gaussian noise of std σC/√m) appended to its postprocessor chain."""
        program = self.base.local_program()
        extra: list[Any] = []
        if self.clip is not None:
            extra.append(ClipPerLayer(self.clip) if self.clip_per_layer
                         else ClipUpdateNorm(self.clip))
        if self.noise == "local" and self.noise_multiplier > 0:
            extra.append(GaussianUpdateNoise(self.noise_multiplier * self.clip
                                             / math.sqrt(self.m)))
        return dataclasses.replace(program, postprocess=program.postprocess + tuple(extra))

    def epsilon_spent(self, rounds: int) -> float:
        """ε after ``rounds`` rounds (the accountant's; inf without noise)."""
        if self.noise_multiplier == 0:
            return math.inf if rounds else 0.0
        return accounting.ledger_epsilon(((self.noise_multiplier, self.sampling_rate,
                                           int(rounds)),), self.delta, self.accountant)

    def run_round(self, state: ServerState, executor: Executor, optimizer: Any = None
                  ) -> tuple[ServerState, dict[str, Any]]:
        """Sample S_t, run its clients (clipped, locally noised), release Δ̃_t, server step."""
        if executor.on_nonfinite == "drop":   # the run refuses it; a direct caller too
            raise ValueError("on_nonfinite: drop renormalises the average over the kept "
                             "clients, which breaks the fixed-denominator sensitivity C/m; use "
                             "error with privacy")
        used = state.extra.get(NOISE_KEY)
        if used is not None and float(used) != self.noise_multiplier:
            raise ConfigError(f"privacy.noise_multiplier: rounds 1..{state.round} of this run "
                              f"were noised with {float(used)!r}, this config gives "
                              f"{self.noise_multiplier!r} (a noise calibrated from epsilon "
                              f"depends on algorithm.rounds); resume with the recorded "
                              f"algorithm.rounds, or start a new run with a fixed "
                              f"noise_multiplier to extend it")
        ids = self.base.sample_clients(state.round)
        weights = np.full(len(ids), 1.0 / self.m)
        out, _, _ = self.base.run_clients(state, executor, ids, weights, optimizer)
        delta = out.delta_sum
        if self.noise == "central":
            delta = central_noise(delta, self.aggregate_std, self.seed, state.round)
        stats = {"local_loss": local_loss(out), "updates": out.updates, "samples": out.samples,
                 **dropped_stats(state, executor),
                 "epsilon_spent": self.epsilon_spent(state.round + 1)}
        new = self.base.apply(state, delta)
        return dataclasses.replace(new, extra={**new.extra, NOISE_KEY: self.noise_multiplier}), \
            stats
