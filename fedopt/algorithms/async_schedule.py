"""The event loop of the asynchronous family (federated.md §2.3): when the server aggregates and
whose updates — a pure function of the virtual clock, never of the data or the model.

Up to ``M`` (``concurrency``) clients work at a time. A client dispatched when the server holds
model version ``v`` trains on ``θ^v`` (its *start version* ``ρ``) and its update arrives at the
completion time drawn by :class:`~fedopt.clock.VirtualClock`. Server step ``n`` aggregates the
set ``A(n)`` of arrived updates and makes version ``n + 1``; an update of start version ``ρ``
aggregated at step ``n`` has staleness ``s = n − ρ`` (in server steps, not in time). Triggers:

* ``buffer_size = c`` — aggregate as soon as ``c`` updates have arrived (``c = 1``: asynchronous
  FedAvg / FedAsync, one step per arrival; ``c = M`` with ``cancel_stragglers``: synchronous
  FedAvg). Optionally also ``deadline`` time units after the previous aggregation.
* ``interval = Δt`` — FedFix: aggregate at ``Δt, 2Δt, ...`` whatever has arrived (possibly nothing:
  a legal no-op step that still advances the version).

Dispatch: ``on_aggregation`` (Fraboni et al.: free slots are refilled right after each
aggregation, with the new model) or ``on_arrival`` (Nguyen et al.'s FedBuff: refilled at every
arrival or timeout, with the current model). Either way a client is dispatched with the newest
model of the instant it is freed: an on-arrival refill waits until every event at that same
virtual time has been handled, so an arrival that fills the buffer (or that a tick or deadline
at the same time aggregates) is aggregated *before* its client is re-dispatched, with
``θ^{n+1}`` — which is what makes FedBuff with ``c = 1`` equal asynchronous FedAvg. Events are
still handled one at a time: with ``c = 1`` each of two simultaneous arrivals is its own step.
Free slots go to idle clients that have not yet received the
current version (so a job is identified by (client, start version)); when fewer slots than such
clients are free, the clients are drawn uniformly without replacement, keyed by
(seed, version) exactly like FedAvg's client sampling (and by (seed, version, k) for the k-th
dispatch at one version). ``cancel_stragglers`` drops every unfinished job at each aggregation
(synchronous rounds); ``clock.timeout`` drops a job that is not back ``timeout`` after its
dispatch. Dropped jobs are counted.

Never hangs: if no further update can ever arrive (the queue is empty, every job in flight never
completes), a partly filled buffer is aggregated as it is ("flushed"); with nothing buffered
either, free slots are refilled with the current model (under ``on_aggregation`` too: every job
in flight was dropped, so no aggregation would ever refill them), and when no client is left to
dispatch :class:`ClockStall` (a :class:`~fedopt.config.ConfigError`) names the clock setting
that stops the run: jobs that never complete without a ``clock.timeout``, or a
``clock.timeout`` shorter than every job (with the shortest job time). (``clock.failure_prob``
of 1, where no job ever returns, is refused by the config.)

Events at equal times resolve arrivals first, then timeouts, then ticks/deadlines, and among
arrivals the lowest client id first (:mod:`fedopt.clock.queue`).

The whole loop state is a dict of tensors, lists and numbers (checkpointed with the server).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedopt.clock import DONE, TIMEOUT, TIMER, EventQueue, VirtualClock
from fedopt.schema import ConfigError
from fedopt.rng import STREAM_SAMPLING, round_generator

DISPATCH_MODES = ("on_aggregation", "on_arrival")
TICK, DEADLINE = -2, -1     # client field of TIMER events
_ARRAYS = ("busy", "job_version", "job_count", "job_dispatch", "job_finish", "participations")


class ClockStall(ConfigError, RuntimeError):
    """No client update can ever arrive again, nothing is buffered and no client is left to
    dispatch: the clock's settings stop the run (the message names the field)."""


@dataclass(frozen=True)
class SchedulePolicy:
    """When to aggregate (``buffer_size`` xor ``interval``) and how clients are dispatched."""

    concurrency: int
    buffer_size: int | None = None
    interval: float | None = None
    deadline: float | None = None
    cancel_stragglers: bool = False
    dispatch: str = "on_aggregation"

    def __post_init__(self) -> None:
        if (self.buffer_size is None) == (self.interval is None):
            raise ValueError("give exactly one of buffer_size and interval")
        if self.dispatch not in DISPATCH_MODES:
            raise ValueError(f"dispatch: one of {DISPATCH_MODES}, got {self.dispatch!r}")


@dataclass
class Step:
    """One server step ``n``: its time and ``A(n)`` (sorted by client id), plus the jobs that
    were dispatched (``(clients, start version)`` groups) and dropped (``(client, version)``)
    while the loop advanced to it."""

    index: int
    time: float
    clients: np.ndarray
    versions: np.ndarray
    jobs: np.ndarray
    arrival_times: np.ndarray
    dispatched: list[tuple[np.ndarray, int]] = field(default_factory=list)
    dropped: list[tuple[int, int]] = field(default_factory=list)
    flushed: bool = False

    @property
    def staleness(self) -> np.ndarray:
        """``s_i(n) = n − ρ_i(n)`` of every aggregated update."""
        return self.index - self.versions


class VirtualEvents:
    """The event source of :meth:`Scheduler.advance`: ``next(queue)`` gives the next event
    ``(time, kind, client, serial, ...)`` (extra fields are passed on to the hooks) or None
    when nothing can happen any more; ``peek(queue)`` the time of the next event already known
    (+inf if none; never blocks); ``label`` names the clock in :class:`ClockStall`."""

    label = "virtual clock"

    @staticmethod
    def next(queue: EventQueue) -> tuple | None:
        return queue.pop()

    @staticmethod
    def peek(queue: EventQueue) -> float:
        return queue.peek_time()


class LoopHooks:
    """Side effects of :meth:`Scheduler.advance` (here: none). ``on_dispatch`` gets the step's
    dispatch list after a dispatch made before the trigger fires (on arrival, or a refill when
    the loop would stall); a hook that starts those jobs itself empties it, so that the step
    reports only the dispatch made when it fires."""

    @staticmethod
    def on_arrival(client: int, serial: int, event: tuple) -> None:
        pass

    @staticmethod
    def on_timeout(client: int) -> None:
        pass

    @staticmethod
    def on_dispatch(dispatched: list[tuple[np.ndarray, int]]) -> None:
        pass


class Scheduler:
    """Advances the loop state one server step at a time (see the module docstring)."""

    def __init__(self, policy: SchedulePolicy, clock: VirtualClock, seed: int):
        self.policy = policy
        self.clock = clock
        self.num_clients = clock.num_clients
        self.seed = int(seed)
        if not 1 <= policy.concurrency <= self.num_clients:
            raise ValueError(f"concurrency must be in [1, {self.num_clients}], "
                             f"got {policy.concurrency}")

    # -- state -------------------------------------------------------------------------------
    def init_state(self) -> tuple[dict[str, Any], list[tuple[np.ndarray, int]]]:
        """The state at virtual time 0 after the first dispatch (version 0), and that dispatch."""
        n = self.num_clients
        st: dict[str, Any] = {
            "now": 0.0, "version": 0, "sub": 0, "tick": 1,
            "busy": torch.zeros(n, dtype=torch.bool),
            "job_version": torch.full((n,), -1, dtype=torch.int64),
            "job_count": torch.zeros(n, dtype=torch.int64),
            "job_dispatch": torch.zeros(n, dtype=torch.float64),
            "job_finish": torch.full((n,), math.inf, dtype=torch.float64),
            "participations": torch.zeros(n, dtype=torch.int64),
            "ready": [], "queue": [], "arrived": 0, "dropped": 0, "dispatched": 0,
            "clock": {k: torch.from_numpy(v) for k, v in self.clock.init_state().items()},
        }
        queue = EventQueue(st["queue"])
        p = self.policy
        if p.interval is not None:
            queue.push(p.interval, TIMER, TICK, 1)
        if p.deadline is not None:
            queue.push(p.deadline, TIMER, DEADLINE, 0)
        dispatched: list[tuple[np.ndarray, int]] = []
        self.dispatch(st, queue, dispatched)
        return st, dispatched

    @staticmethod
    def copy_state(st: dict[str, Any]) -> dict[str, Any]:
        """An independent copy of the scheduler state: tensors cloned, lists copied (events
        are immutable tuples, ready entries small lists) — ~10x cheaper than deepcopy, which
        matters because a time budget peeks one step ahead after every step."""
        def cp(v: Any) -> Any:
            if isinstance(v, torch.Tensor):
                return v.clone()
            if isinstance(v, dict):
                return {k: cp(x) for k, x in v.items()}
            if isinstance(v, list):
                return [list(x) if isinstance(x, list) else x for x in v]
            return v
        return cp(st)

    # -- the loop ----------------------------------------------------------------------------
    def advance(self, st: dict[str, Any], events: Any = None, hooks: Any = None) -> Step:
        """Process events until the trigger fires; returns server step ``st["version"]``
        (the state is updated in place and then holds version + 1).

        ``events`` is where events come from (default :class:`VirtualEvents`: the virtual
        queue); ``hooks`` (default :class:`LoopHooks`: none) adds side effects. The real-time
        driver (:mod:`fedopt.server.realtime`) passes its ``ray.wait``-backed source and hooks."""
        p = self.policy
        events = VirtualEvents if events is None else events
        hooks = LoopHooks if hooks is None else hooks
        queue = EventQueue(st["queue"])
        busy = st["busy"].numpy()
        job_count, job_version = st["job_count"].numpy(), st["job_version"].numpy()
        dispatched: list[tuple[np.ndarray, int]] = []
        dropped: list[tuple[int, int]] = []
        ready: list[list] = st["ready"]
        owed = False          # an on-arrival refill waiting for the end of the current instant
        while True:
            if p.buffer_size is not None and len(ready) >= p.buffer_size:
                return self.fire(st, queue, p.buffer_size, dispatched, dropped)
            if owed and events.peek(queue) > st["now"]:
                owed = False
                self._dispatch_now(st, queue, dispatched, hooks)
            ev = events.next(queue)
            if ev is None:
                if ready:
                    return self.fire(st, queue, len(ready), dispatched, dropped, flushed=True)
                if self._dispatch_now(st, queue, dispatched, hooks):
                    continue              # every job was dropped: refill rather than stall
                raise ClockStall(self.stall_message(st, events.label))
            t, kind, i, serial = ev[:4]
            if kind == TIMER:
                if i == TICK and serial == st["tick"]:
                    st["now"] = max(st["now"], t)
                    st["tick"] = serial + 1
                    queue.push((serial + 1) * p.interval, TIMER, TICK, serial + 1)
                    return self.fire(st, queue, len(ready), dispatched, dropped)
                if i == DEADLINE and serial == st["version"]:
                    st["now"] = max(st["now"], t)
                    return self.fire(st, queue, len(ready), dispatched, dropped)
                continue
            if not busy[i] or job_count[i] - 1 != serial:
                continue                                      # stale: job gone already
            # virtual events pop in time order (t >= now); a real arrival may lag a timer
            st["now"] = max(st["now"], t)
            busy[i] = False
            if kind == DONE:
                ready.append([i, int(job_version[i]), serial, st["now"]])
                st["arrived"] += 1
                hooks.on_arrival(i, serial, ev)
            else:                                             # TIMEOUT
                dropped.append((i, int(job_version[i])))
                st["dropped"] += 1
                hooks.on_timeout(i)
            # refill once this instant is over: a trigger it sets off (a full buffer, a tick or
            # deadline at the same time) aggregates first and fire() then refills with θ^{n+1}
            owed = owed or p.dispatch == "on_arrival"

    def _dispatch_now(self, st: dict[str, Any], queue: EventQueue, dispatched: list,
                      hooks: Any) -> bool:
        """Refill free slots at the current version before the trigger fires; True if any
        client was dispatched."""
        before = st["dispatched"]
        self.dispatch(st, queue, dispatched)
        hooks.on_dispatch(dispatched)
        return st["dispatched"] > before

    def stall_message(self, st: dict[str, Any], label: str) -> str:
        """Why no update can ever arrive at step ``st["version"]``, naming the clock field to
        change (every client is then either stuck in a job that never completes or was dropped
        at this version, since otherwise a free slot would have been refilled)."""
        version = st["version"]
        where = f"no client update can ever arrive at step {version} ({label})"
        busy = st["busy"].numpy()
        stuck = np.flatnonzero(busy).tolist()
        if stuck:           # only without a timeout: a finite one would drop them
            return (f"clock.timeout: {where}: the jobs of clients {_ids(stuck)} never complete "
                    f"(infinite compute time, offline forever or failed) and clock.timeout is "
                    f"not set; set clock.timeout so that the server drops them")
        gone = np.flatnonzero(~busy & (st["job_version"].numpy() == version))
        took = (st["job_finish"].numpy() - st["job_dispatch"].numpy())[gone]
        timeout = getattr(self.clock, "timeout", math.inf)
        msg = (f"clock.timeout: {where}: every client that can train on model version {version} "
               f"(clients {_ids(gone.tolist())}) was dropped after clock.timeout = {timeout:g} "
               f"time units without returning an update, so the model can never change; ")
        if np.isfinite(took).any():
            return msg + (f"raise clock.timeout above {took[np.isfinite(took)].min():.6g} "
                          f"(the shortest of those jobs)")
        if getattr(self.clock, "simulated", True):
            return msg + ("their jobs never complete (infinite compute time, offline forever "
                          "or failed)")
        return msg + "raise clock.timeout (in seconds: no delays are injected)"

    def fire(self, st: dict[str, Any], queue: EventQueue, count: int,
              dispatched: list, dropped: list, flushed: bool = False) -> Step:
        """Aggregate the first ``count`` buffered updates as step n; cancel stragglers if
        asked; move to version n + 1 and refill free slots."""
        n = st["version"]
        taken, st["ready"][:] = st["ready"][:count], st["ready"][count:]
        taken.sort(key=lambda e: e[0])
        arr = np.asarray(taken, dtype=np.float64).reshape(-1, 4)
        clients = arr[:, 0].astype(np.int64)
        if self.policy.cancel_stragglers:
            busy = st["busy"].numpy()
            for i in np.flatnonzero(busy):
                dropped.append((int(i), int(st["job_version"][i])))
            st["dropped"] += int(busy.sum())
            busy[:] = False
        np.add.at(st["participations"].numpy(), clients, 1)
        st["version"] = n + 1
        st["sub"] = 0
        if self.policy.deadline is not None:
            queue.push(st["now"] + self.policy.deadline, TIMER, DEADLINE, n + 1)
        self.dispatch(st, queue, dispatched)
        return Step(index=n, time=st["now"], clients=clients, versions=arr[:, 1].astype(np.int64),
                    jobs=arr[:, 2].astype(np.int64), arrival_times=arr[:, 3],
                    dispatched=dispatched, dropped=dropped, flushed=flushed)

    def dispatch(self, st: dict[str, Any], queue: EventQueue, dispatched: list) -> None:
        """Fill free slots with idle clients that have not yet received the current version."""
        busy = st["busy"].numpy()
        job_version = st["job_version"].numpy()
        version = st["version"]
        free = self.policy.concurrency - int(busy.sum())
        if free <= 0:
            return
        eligible = np.flatnonzero(~busy & (job_version < version))
        if len(eligible) == 0:
            return
        if free >= len(eligible):
            chosen = eligible
        else:
            rng = self._rng(version, st["sub"])
            chosen = eligible[np.sort(rng.choice(len(eligible), free, replace=False))]
        st["sub"] += 1
        now = st["now"]
        jobs = st["job_count"].numpy()[chosen].copy()
        clock_state = {k: v.numpy() for k, v in st["clock"].items()}
        finish = self.clock.finish_times(chosen, jobs, now, clock_state)
        busy[chosen] = True
        job_version[chosen] = version
        st["job_count"].numpy()[chosen] += 1
        st["job_dispatch"].numpy()[chosen] = now
        st["job_finish"].numpy()[chosen] = finish
        st["dispatched"] += len(chosen)
        deadline = now + self.clock.timeout
        for i, j, t in zip(chosen.tolist(), jobs.tolist(), finish.tolist()):
            if t <= deadline:
                queue.push(t, DONE, i, j)
            else:
                queue.push(deadline, TIMEOUT, i, j)           # no-op when deadline is +inf
        dispatched.append((chosen, version))

    def _rng(self, version: int, sub: int) -> np.random.Generator:
        if sub == 0:   # the first dispatch of a version: FedAvg's sampling stream for that round
            return round_generator(self.seed, STREAM_SAMPLING, version)
        return np.random.default_rng([self.seed & 0xFFFFFFFF, self.seed >> 32, STREAM_SAMPLING,
                                      version, sub])

    # -- schedule-only helpers ---------------------------------------------------------------
    def steps(self, st: dict[str, Any], count: int) -> list[Step]:
        """The next ``count`` steps (advances ``st``)."""
        return [self.advance(st) for _ in range(count)]

    def steps_within(self, st: dict[str, Any], time_budget: float,
                     max_steps: int = 10_000_000) -> int:
        """How many further server steps happen at virtual times ``<= time_budget`` (on a copy
        of ``st``; no training needed, since the schedule ignores the data)."""
        st = self.copy_state(st)
        count = 0
        while count < max_steps:
            if self.advance(st).time > time_budget:
                break
            count += 1
        return count


def _ids(ids: list[int], limit: int = 10) -> str:
    """``[0, 1, 2]``, or the first ``limit`` and how many more."""
    if len(ids) <= limit:
        return str(ids)
    return f"{ids[:limit]} and {len(ids) - limit} more"
