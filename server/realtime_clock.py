"""The virtual clock as seen by a real-time scheduler: injected delays instead of queued arrivals.

In real-time mode (:mod:`fedopt.server.realtime`) the asynchronous scheduler
(:class:`fedopt.algorithms.async_schedule.Scheduler`) runs on *real* time measured in clock units
of ``seconds_per_unit`` seconds each: ``now = (wall seconds since the start) / seconds_per_unit``.
Its timers (FedFix ticks ``Δt, 2Δt, ...``, deadlines, ``clock.timeout``) keep their meaning in
those units, but a completion is no longer an event it computes: it is the moment a Ray worker's
answer actually arrives. :class:`RealTimeClock` stands in for the scheduler's
:class:`~fedopt.clock.VirtualClock`. When client ``i``'s ``j``-th job is dispatched at ``t0`` it
asks the virtual clock for its completion time ``f_{i,j}`` (compute law × speed factor +
communication, paused while the client is offline, ``+inf`` when the job fails) and records the
injected delay

    delay_{i,j} = (f_{i,j} − t0) · seconds_per_unit        (= w_{i,j} · seconds_per_unit when the
                                                             client is always online, exactly
                                                             what :func:`fedopt.server.ray_async.
                                                             delay_from_clock` injects)

which the worker holds its answer for (real compute counts towards it). To the scheduler it
answers ``f_{i,j}`` itself, so the scheduler queues every arrival (or timeout) exactly as on the
virtual clock, and the driver delivers each answer at its queued place in that order — waiting
for an earlier-scheduled job whose answer is late — which makes the real-time run the
virtual-clock run at any ``seconds_per_unit``. With ``seconds_per_unit=None`` nothing is
injected (delay 0, jobs take their real compute time, failures are not simulated), one clock
unit is one second, and the scheduler gets ``+inf`` for every job: only timers and, with a finite
``clock.timeout``, each job's timeout are queued, and answers count in the order they arrive.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from fedopt.clock import VirtualClock


class RealTimeClock:
    """A :class:`~fedopt.clock.VirtualClock` turned into per-job injected delays (module doc)."""

    def __init__(self, clock: VirtualClock, seconds_per_unit: float | None):
        if seconds_per_unit is not None and not 0 < seconds_per_unit < math.inf:
            raise ValueError(f"seconds_per_unit: must be a finite number > 0 or None, "
                             f"got {seconds_per_unit!r}")
        self.clock = clock
        self.seconds_per_unit = seconds_per_unit
        #: seconds of one clock unit (timers, ``now``): 1 s when nothing is injected
        self.unit_s = 1.0 if seconds_per_unit is None else float(seconds_per_unit)
        self.num_clients = clock.num_clients
        self.timeout = clock.timeout
        #: whether job times come from the virtual clock (injected delays, queued arrivals)
        self.simulated = seconds_per_unit is not None
        #: a job fails with this probability (only where failures are simulated)
        self.failure_prob = clock.failure_prob if self.simulated else 0.0
        #: injected delay (seconds, +inf: never returns) of each client's latest dispatched job,
        #: taken by the driver when it submits the job
        self.delays: dict[int, float] = {}

    @property
    def deterministic(self) -> bool:
        return self.clock.deterministic

    def init_state(self) -> dict[str, np.ndarray]:
        return self.clock.init_state()

    def mean_durations(self) -> np.ndarray:
        return self.clock.mean_durations()

    def finish_times(self, clients: np.ndarray, jobs: np.ndarray, t0: float,
                     state: dict[str, np.ndarray]) -> np.ndarray:
        """Record each job's injected delay; answer the virtual completion times (+inf for
        every job when nothing is injected: the real arrival is then the event)."""
        clients = np.asarray(clients, dtype=np.int64)
        if self.seconds_per_unit is None:
            self.delays.update((c, 0.0) for c in clients.tolist())
            return np.full(len(clients), math.inf)
        finish = self.clock.finish_times(clients, jobs, t0, state)
        with np.errstate(invalid="ignore"):
            delays = np.where(np.isinf(finish), math.inf,
                              (finish - float(t0)) * self.seconds_per_unit)
        self.delays.update(zip(clients.tolist(), delays.tolist()))
        return finish

    def take_delay(self, client: int) -> float:
        """The injected delay of ``client``'s job just dispatched (forgotten once taken)."""
        return self.delays.pop(int(client))

    def work(self, clients: np.ndarray, jobs: np.ndarray, state: dict[str, Any]) -> np.ndarray:
        return self.clock.work(clients, jobs, state)
