"""The virtual clock of a client population: how long each client job takes.

Client i's j-th job, dispatched at virtual time ``t0``, needs the online work

    w_{i,j} = s_i · X_{i,j} + c_i,          c_i = 2 · latency + l_i · (down + up) / bandwidth

(``X_{i,j}`` from the compute law, :mod:`fedopt.clock.laws`; speed factor ``s_i`` and link factor
``l_i`` from :mod:`fedopt.clock.factors`; ``down``/``up`` the payload bytes, by default the model's
size) and completes when its client has been online for ``w_{i,j}`` since ``t0``
(:mod:`fedopt.clock.availability`). With probability ``failure_prob`` a job fails and never
returns (``+inf``). All draws are keyed by (seed, client, job index), never by host speed or
event order, so the same seed gives the same completion times in every run.

The clock's own mutable state (Markov states of bursty clients, availability cursors) is a dict
of arrays the caller stores with the server state.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from fedopt.clock.availability import build_availability
from fedopt.clock.factors import client_factors
from fedopt.clock.laws import build_law
from fedopt.rng import STREAM_CLOCK, keyed_uniform
from fedopt.schema import ConfigError

# sub-stream tags (first coordinate after STREAM_CLOCK)
TAG_COMPUTE, TAG_FAILURE, TAG_AVAILABILITY, TAG_SPEED, TAG_LINK = 1, 2, 3, 4, 5


class VirtualClock:
    """Completion times of client jobs under a validated ``clock:`` config (see module doc)."""

    def __init__(self, config: dict[str, Any], num_clients: int, seed: int,
                 payload_bytes: float = 0.0):
        self.config = config
        self.num_clients = int(num_clients)
        self.seed = int(config["seed"] if config.get("seed") is not None else seed)
        self.law = build_law(config["compute"], (TAG_COMPUTE,))
        self.speed = client_factors(config["speed"], num_clients, self.seed, (TAG_SPEED,),
                                    "clock.speed")
        self.comm = communication_times(config["communication"], num_clients, self.seed,
                                         payload_bytes)
        self.availability = build_availability(config["availability"], self.seed,
                                               (TAG_AVAILABILITY,))
        self.failure_prob = float(config["failure_prob"])
        t = config["timeout"]
        self.timeout = math.inf if t is None else float(t)

    @property
    def deterministic(self) -> bool:
        """Whether every job of a client takes the same time (constant law, always online,
        no failures)."""
        from fedopt.clock.availability import AlwaysOnline
        from fedopt.clock.laws import Constant

        return (isinstance(self.law, Constant) and isinstance(self.availability, AlwaysOnline)
                and self.failure_prob == 0.0)

    def init_state(self) -> dict[str, np.ndarray]:
        state = dict(self.availability.init_state(self.num_clients))
        law_state = self.law.init_state(self.seed, self.num_clients)
        if law_state is not None:
            state["law"] = law_state
        return state

    def work(self, clients: np.ndarray, jobs: np.ndarray,
             state: dict[str, np.ndarray]) -> np.ndarray:
        """Online work ``w_{i,j}`` (+inf for failed jobs and infinitely slow clients)."""
        x = self.law.sample(self.seed, clients, jobs, state.get("law"))
        s = self.speed[clients]
        compute = np.where(np.isinf(s) | np.isinf(x), math.inf, s * x)
        w = compute + self.comm[clients]
        if self.failure_prob > 0:
            fail = keyed_uniform(self.seed, STREAM_CLOCK, TAG_FAILURE, clients, jobs) < self.failure_prob
            w = np.where(fail, math.inf, w)
        return w

    def finish_times(self, clients: np.ndarray, jobs: np.ndarray, t0: float,
                     state: dict[str, np.ndarray]) -> np.ndarray:
        """Completion times of the jobs ``jobs`` of ``clients`` dispatched at ``t0``; the jobs of
        one client must be asked for in order (j = 0, 1, ...) and with growing ``t0``."""
        clients = np.asarray(clients, dtype=np.int64)
        jobs = np.asarray(jobs, dtype=np.int64)
        return self.availability.finish(clients, float(t0), self.work(clients, jobs, state), state)

    def min_work(self) -> float:
        """The shortest time any job can take: ``min_i (s_i · min X + c_i)`` (the law's lower
        bound, :meth:`~fedopt.clock.laws.ComputeLaw.minimum`; availability only lengthens a
        job, failures only lose it). +inf when no client's job can ever complete."""
        x = self.law.minimum()
        with np.errstate(invalid="ignore"):
            compute = np.where(np.isinf(self.speed) | math.isinf(x), math.inf, self.speed * x)
        work = compute + self.comm
        return float(work.min()) if work.size else math.inf

    def check_reachable(self, deadline: float | None = None, cancel_stragglers: bool = False,
                        interval: float | None = None) -> None:
        """ConfigError when no job can ever come back in time: ``clock.timeout`` below
        :meth:`min_work` (every job is dropped before it returns), or, when stragglers are
        cancelled at each aggregation, a round ``deadline`` (``algorithm.deadline``) or FedFix
        ``interval`` (``algorithm.interval``) below it (every round ends before a job can
        return, so every round is empty). A job returning exactly at the limit counts."""
        least = self.min_work()
        if math.isinf(least):
            raise ConfigError("clock.timeout: no client's job can ever complete (every client's "
                              "time is +inf: clock.compute, clock.speed or clock.communication), "
                              "so no client update ever arrives, whatever clock.timeout is")
        why = (f"the shortest possible job time is {least:.6g} (clock.compute's minimum x "
               f"clock.speed + communication)")
        if self.timeout < least:
            raise ConfigError(f"clock.timeout: {self.timeout:g} is below every job's time: {why}, "
                              f"so every job is dropped before it returns and no client update "
                              f"ever arrives; raise clock.timeout to at least {least:.6g}")
        if not cancel_stragglers:
            return
        for field, limit in (("algorithm.deadline", deadline), ("algorithm.interval", interval)):
            if limit is not None and limit < least:
                raise ConfigError(f"{field}: {limit:g} is below every job's time: {why}; the "
                                  f"jobs in flight are cancelled at each aggregation, so every "
                                  f"round would be empty; raise {field} to at least {least:.6g}")

    def mean_durations(self) -> np.ndarray:
        """``E[τ_i]`` per client: mean online work divided by the long-run online fraction
        (failures and timeouts not modelled; +inf where a client may never return)."""
        mean_x = self.law.mean()
        frac = self.availability.online_fraction()
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(np.isinf(self.speed), math.inf, self.speed * mean_x) + self.comm
            if frac == 0.0:
                return np.full(self.num_clients, math.inf)
            mean = mean / frac
        if self.failure_prob >= 1.0:
            mean[:] = math.inf
        return np.where(np.isnan(mean), math.inf, mean)


def communication_times(spec: dict[str, Any], num_clients: int, seed: int,
                        payload_bytes: float) -> np.ndarray:
    """``c_i = 2 · latency + l_i · (down + up) / bandwidth`` (0 with the default infinite
    bandwidth and zero latency); ``down``/``up`` default to ``payload_bytes`` (the model)."""
    down = payload_bytes if spec["down_bytes"] is None else spec["down_bytes"]
    up = payload_bytes if spec["up_bytes"] is None else spec["up_bytes"]
    link = client_factors(spec["link"], num_clients, seed, (TAG_LINK,), "clock.communication.link")
    bw = float(spec["bandwidth"])
    transfer = np.zeros(num_clients) if (down + up) == 0 or math.isinf(bw) else \
        np.where(np.isinf(link), math.inf, link * (down + up) / bw)
    return 2.0 * float(spec["latency"]) + transfer
