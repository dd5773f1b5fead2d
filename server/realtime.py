"""Asynchronous algorithms in real time on Ray workers: the server aggregates updates in the order
they actually arrive (federated.md §2.3, run on real actors instead of the virtual clock).

:class:`RealTimeAsync` wraps an asynchronous algorithm object
(:class:`fedopt.algorithms.asynchronous.AsyncFederated`: ``fedavg_sync``, ``fedfix``,
``async_fedavg``, ``fedasync``, ``fedbuff``, ``async_general``) and keeps everything that defines
it — the trigger and dispatch policy (:class:`~fedopt.algorithms.async_schedule.Scheduler`), the
weight rule and staleness function (``AsyncFederated.weights``), the server optimizer — but
replaces the virtual clock by real time. One ``run_round(state, executor, optimizer)`` is one
server step ``n``:

    θ^{n+1} = ServerOpt(θ^n, Δ^n),   Δ^n = Σ_{i∈A(n)} ω_i(n) Δ_i(θ^{ρ_i(n)})          (delta)
                                     Δ^n = Σ_{i∈A(n)} ω_i(n) (y_i − θ^n)                (FedAsync)
    ω_i(n) = d_i φ(s_i(n)),   s_i(n) = n − ρ_i(n)   (real staleness, in server versions)

where ``A(n)`` is what really arrived: up to ``M = clients_per_round`` clients train at once on
the workers (``executor.submit``, one Ray job per client, minibatches keyed by (seed, ρ, i) as in
the virtual run); the server blocks in ``executor.wait`` (``ray.wait``) and handles each update
when it is back (in which order: see Time below). The trigger is the algorithm's own: aggregate
after ``c`` arrivals (``c = 1``: async FedAvg / FedAsync, one step per arrival; FedBuff-``c``),
at real times ``Δt, 2Δt, ...`` (FedFix) or at a deadline. Freed slots are refilled by the scheduler's own
dispatch rule with the current model, the moment it fires: ``on_aggregation``, the clients that
just reported get θ^{n+1}; ``on_arrival``, after each arrival an idle client that has not yet
received the current model gets it — once the aggregation that arrival sets off is done, so a
client whose update completes the buffer restarts on θ^{n+1} (as in the virtual run a job is
identified by (client, start version)). A job not back ``clock.timeout`` after its
dispatch is dropped and its Ray call cancelled; so are stragglers under ``cancel_stragglers``.

Time. With ``seconds_per_unit`` set, the ``clock:`` models are injected: a job of client ``i``
that the virtual clock says completes at ``f`` (dispatched at ``t0``) is held on its worker until
``(f − t0) · seconds_per_unit`` seconds after it started (real compute counts towards it; a job
that never returns is not submitted and waits for its timeout), and the scheduler queues its
arrival at ``f`` exactly as on the virtual clock (:mod:`fedopt.server.realtime_clock`). Events are
handled in that queue's order: an answer is delivered at its virtual completion time's place —
when a later-scheduled job answers first (jitter, or compute slower than the injected gap), it
waits for the earlier one — and a timer or timeout is handled no earlier than
``t · seconds_per_unit`` seconds after the start. So the real-time run *is* the virtual-clock
run, step by step (schedule, staleness, models), at any ``seconds_per_unit``; real time only
lags. Without ``seconds_per_unit`` jobs take their real time, answers count in the order they
arrive (``now = wall seconds since the start``) and timers are in seconds.

Stats of a step (the metrics row): ``virtual_time`` (the step's time in clock units: the virtual
time with injected delays, the real one without, so real and virtual runs share an x axis),
``realtime_s`` (wall seconds from the start to the step, continued across resumes),
``updates`` (kept arrivals), ``samples``, ``dropped``, ``staleness_mean``/``staleness_max``
(as in the virtual run, same code), ``local_loss`` (Σ ω_i L_i / Σ ω_i, as in the virtual run),
``nonfinite_dropped`` (under ``on_nonfinite: drop``), ``in_flight`` (jobs running on the workers
after the step) and ``restarted`` (jobs restarted by resumes, cumulative).

Non-finite updates (NaN/±inf, found on the workers: ``ClientUpdate.nonfinite``) follow the
run's ``on_nonfinite`` (the executor's ``on_nonfinite``) exactly as on the virtual clock: under
``error`` the step that handles one raises one
:class:`~fedopt.engine.nonfinite.NonFiniteError` naming the client(s) and the round their jobs
started in; under ``drop`` they are left out of ``A(n)``, the step's sum is renormalised once over
the kept arrivals (:func:`~fedopt.engine.executor.drop_scale`), a step that keeps none changes
neither the model nor the server-optimizer state, ``updates`` counts the kept arrivals and
``nonfinite_dropped`` (cumulative, in the checkpointed totals) the dropped ones. A server step
whose new parameters or optimizer state are not finite raises under either policy; the model is
never replaced by a non-finite one.

Checkpoints. ``ServerState.extra["realtime"]`` holds the scheduler's loop state (version,
busy clients and their start versions and job counters, participation counts, timers), the
staleness totals and the restart count — plain tensors and lists, saved with the model. In-flight
Ray jobs (and updates received but not yet handled) cannot be saved: when ``run_round`` meets a
state that is not the one its jobs belong to (a restored checkpoint), it restarts every job that
was in flight from the restored model ``θ^n`` (same clients, start version ``n``, fresh job
counter, so staleness is counted from ``n``), and real time continues from the checkpoint's time.
A resumed real-time run is therefore a valid run of the algorithm but not the uninterrupted one.

Use::

    driver = RealTimeAsync(algorithm, seconds_per_unit=0.05)   # algorithm: an AsyncFederated
    state = driver.init(params)
    state, stats = driver.run_round(state, ray_executor, client_optimizer)   # one server step
    driver.close(ray_executor)                                 # cancel the jobs still running

or, from a run config, ``executor: {name: ray, realtime: true, seconds_per_unit: 0.05}`` with an
asynchronous ``algorithm`` and ``fedopt.run(config)``.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedopt.algorithms.async_aggregate import ParamSum, WeightedMean, renormalized
from fedopt.algorithms.async_schedule import LoopHooks, Scheduler, Step
from fedopt.algorithms.base import Params, ServerState
from fedopt.clock import DONE, EventQueue
from fedopt.config import ConfigError
from fedopt.engine.contract import ClientUpdate, check_executor
from fedopt.engine.nonfinite import check_server_state, client_error
from fedopt.server.ray_async import RayJob
from fedopt.server.realtime_clock import RealTimeClock


@dataclass(eq=False)
class _InFlight:
    """A dispatched job: its Ray call (None: the clock says it never returns), start version ρ,
    the client's job counter, θ^ρ and (injected delays) its answer once received."""

    job: RayJob | None
    version: int
    serial: int
    params: Params
    answer: ClientUpdate | None = None


@dataclass(eq=False)
class _Arrival:
    """An update the server has received (time in clock units) but not yet handled."""

    time: float
    update: ClientUpdate
    serial: int
    base: Params


class _Live(LoopHooks):
    """One step's events and side effects for :meth:`Scheduler.advance`: arrivals from
    ``ray.wait`` and due timers; record each handled update, cancel the Ray calls of timed-out
    jobs, submit dispatches made before the trigger fires at once (with θ^n)."""

    label = "real time"

    def peek(self, queue: EventQueue) -> float:
        return self.driver._peek(queue)

    def __init__(self, driver: "RealTimeAsync", executor: Any, params: Params, optimizer: Any):
        self.driver, self.executor = driver, executor
        self.params, self.optimizer = params, optimizer

    def next(self, queue: EventQueue) -> tuple | None:
        return self.driver._next_event(queue, self.executor)

    def on_arrival(self, client: int, serial: int, event: tuple) -> None:
        self.driver._arrived[(client, serial)] = event[4]

    def on_timeout(self, client: int) -> None:
        self.driver._reap(self.executor)

    def on_dispatch(self, dispatched: list[tuple[np.ndarray, int]]) -> None:
        self.driver._submit(dispatched, self.params, self.executor, self.optimizer)
        dispatched.clear()


class RealTimeAsync:
    """Drives an asynchronous algorithm's Ray jobs in real time (see the module docstring)."""

    def __init__(self, algorithm: Any, seconds_per_unit: float | None = None):
        for attr in ("policy", "weights", "server_optimizer", "clock_config"):
            if not hasattr(algorithm, attr):
                raise TypeError(f"real-time mode runs the asynchronous algorithms (fedavg_sync, "
                                f"fedfix, async_fedavg, fedasync, fedbuff, async_general); "
                                f"{type(algorithm).__name__} has no {attr!r}")
        self.alg = algorithm
        self.seconds_per_unit = seconds_per_unit
        if seconds_per_unit is not None and not 0 < seconds_per_unit < math.inf:
            raise ConfigError(f"executor.seconds_per_unit: must be a finite number > 0 or "
                              f"null, got {seconds_per_unit!r}")
        self.unit_s = 1.0 if seconds_per_unit is None else float(seconds_per_unit)
        self.clock: RealTimeClock | None = None
        self.scheduler: Scheduler | None = None
        self._rt: dict[str, Any] | None = None           # the state our jobs belong to
        self._origin: float | None = None                # time.monotonic() at clock time 0
        self._initial: list[tuple[np.ndarray, int]] = []  # init's dispatch, submitted on start
        self._initial_params: Params | None = None
        self._jobs: dict[int, _InFlight] = {}
        self._inbox: list[_Arrival] = []
        self._arrived: dict[tuple[int, int], _Arrival] = {}
        self._checked: Any = None                         # the executor checked to be live

    @property
    def ordered(self) -> bool:
        """Whether answers are delivered in virtual completion order (injected delays)."""
        return self.seconds_per_unit is not None

    @classmethod
    def from_config(cls, algorithm: Any, config: dict[str, Any],
                    seconds_per_unit: float | None = None) -> "RealTimeAsync":
        """The driver for a run config: ``seconds_per_unit`` from the argument, else from
        ``config["executor"]["seconds_per_unit"]`` when that key exists."""
        if seconds_per_unit is None:
            seconds_per_unit = (config.get("executor") or {}).get("seconds_per_unit")
        return cls(algorithm, seconds_per_unit)

    def local_program(self) -> Any:
        """The wrapped algorithm's :class:`~fedopt.engine.program.LocalProgram`."""
        return self.alg.local_program()

    def finished(self, state: ServerState) -> bool:
        """True once no further server step ends within ``algorithm.time_budget`` (T, clock
        units). With injected delays the schedule is the virtual one, so this is the virtual
        run's test, exactly (the next step's time, from the queued events, without waiting);
        without them the next step's time is unknown until it happens, and the run stops
        after the first step that ends at or after T seconds."""
        budget = getattr(self.alg, "time_budget", None)
        if budget is None:
            return False
        st = state.extra["realtime"]["sched"]
        if self.ordered:
            return self.alg.scheduler.steps_within(st, budget, max_steps=1) == 0
        return st["now"] >= budget

    # -- state --------------------------------------------------------------------------------
    def init(self, params: Params) -> ServerState:
        """θ^0, the server-optimizer state and the scheduler at time 0 with its first dispatch
        (submitted to the workers by the first ``run_round``, which starts the real clock)."""
        base = self.alg.init(params)   # sets up the algorithm's clock and P(i ∈ A(n))
        self.clock = RealTimeClock(self.alg.clock, self.seconds_per_unit)
        self.scheduler = Scheduler(self.alg.policy, self.clock, self.alg.seed)
        self._drop_everything(None)
        sched, dispatched = self.scheduler.init_state()
        rt = {"sched": sched, "restarted": 0, "realtime_s": 0.0,
              "totals": {"aggregated": 0, "staleness_sum": 0, "staleness_max": 0}}
        self._rt, self._initial, self._initial_params = rt, dispatched, base.params
        return ServerState(params=base.params, opt_state=base.opt_state,
                           extra={"realtime": rt})

    def close(self, executor: Any) -> None:
        """Cancel the jobs still running (call before closing the executor); a later
        ``run_round`` restarts them from the model it is given, like a resume."""
        self._drop_everything(executor)
        self._rt = None

    def _drop_everything(self, executor: Any) -> None:
        if executor is not None:
            jobs = [r.job for r in self._jobs.values() if r.job is not None]
            if jobs:
                executor.cancel(jobs)
        self._jobs, self._inbox, self._arrived = {}, [], {}
        self._initial, self._initial_params, self._origin = [], None, None
        if self.clock is not None:
            self.clock.delays.clear()

    # -- one server step ----------------------------------------------------------------------
    def run_round(self, state: ServerState, executor: Any, optimizer: Any = None
                  ) -> tuple[ServerState, dict[str, Any]]:
        """Wait (in real time) for the trigger, aggregate ``A(n)``, apply the server optimizer,
        submit the freed clients' next jobs with θ^{n+1}.

        Raises :class:`~fedopt.algorithms.async_schedule.ClockStall` (a ``ConfigError`` naming
        the clock field) when no update can ever arrive, ``TypeError`` for an executor without
        submit/wait/cancel, ``ValueError`` for a server state not made by :meth:`init`."""
        if executor is not self._checked:
            check_executor(executor, live=True)   # TypeError naming it and what it lacks
            self._checked = executor
        if self.scheduler is None:
            raise RuntimeError("RealTimeAsync.run_round: call init first")
        self._bind(state, executor, optimizer)
        rt = self._rt
        n = state.round
        if rt["sched"]["version"] != n:
            raise RuntimeError(f"real-time state is at step {rt['sched']['version']} but the "
                               f"server at round {n}")
        step = self._advance(state, executor, optimizer)
        rt["realtime_s"] = time.monotonic() - self._origin
        stats: dict[str, Any] = {"virtual_time": step.time, "realtime_s": rt["realtime_s"]}
        params, opt_state = state.params, state.opt_state
        lost = 0
        if len(step.clients):
            w = self.alg.weights(step, rt["sched"])
            delta, loss, lost = self._combine(step, w, state.params, executor.on_nonfinite)
            if loss is not None:
                stats["local_loss"] = loss
            if delta is not None:        # None: every arrival was non-finite and dropped
                params, opt_state = self.alg.server_optimizer.step(state.params, delta,
                                                                   opt_state)
                check_server_state(n, params, opt_state)
        self._submit(step.dispatched, params, executor, optimizer)
        stats.update(self.alg.step_stats(rt, step, executor))
        if lost:                         # updates aggregated: the kept arrivals
            stats["updates"] -= lost
        stats.update({"in_flight": len(self._jobs), "restarted": rt["restarted"]})
        return dataclasses.replace(state, params=params, opt_state=opt_state,
                                   round=n + 1), stats

    # -- start / resume -----------------------------------------------------------------------
    def _bind(self, state: ServerState, executor: Any, optimizer: Any) -> None:
        """Start the real clock on the first step; on a state our jobs don't belong to (a
        restored checkpoint) restart every job that was in flight from θ^n."""
        rt = state.extra.get("realtime")
        if rt is None:
            raise ValueError("this server state was not made by RealTimeAsync.init (a "
                             "virtual-clock checkpoint cannot be resumed in real time)")
        if rt is self._rt and self._origin is not None:
            return
        st = rt["sched"]
        if rt is self._rt:                               # first step of a fresh run
            initial, params = self._initial, self._initial_params
            self._initial, self._initial_params = [], None
            self._origin = time.monotonic() - st["now"] * self.unit_s
            self._submit(initial, params, executor, optimizer)
            return
        self._drop_everything(executor)
        self._rt = rt
        # continue the wall clock from the checkpoint (never behind its clock time)
        self._origin = time.monotonic() - max(st["now"] * self.unit_s,
                                              float(rt.get("realtime_s", 0.0)))
        busy, job_version = st["busy"].numpy(), st["job_version"].numpy()
        for entry in st["ready"]:          # received but not aggregated: the update is lost too
            busy[int(entry[0])] = True
        st["ready"].clear()
        restart = np.flatnonzero(busy)
        if len(restart) == 0:
            return
        # the scheduler's own dispatch, made to pick exactly the restarted clients: they become
        # idle and eligible (start version < n), every other idle client is hidden meanwhile
        idle = np.flatnonzero(~busy)
        saved = job_version[idle].copy()
        job_version[idle] = st["version"]
        busy[restart] = False
        job_version[restart] = -1
        dispatched: list[tuple[np.ndarray, int]] = []
        self.scheduler.dispatch(st, EventQueue(st["queue"]), dispatched)
        job_version[idle] = saved
        rt["restarted"] += len(restart)
        self._submit(dispatched, state.params, executor, optimizer)

    # -- the real-time event loop (Scheduler.advance with arrivals from ray.wait) -------------
    def _now(self) -> float:
        return (time.monotonic() - self._origin) / self.unit_s

    def _advance(self, state: ServerState, executor: Any, optimizer: Any) -> Step:
        """Handle arrivals, timeouts and timers in time order until the trigger fires; returns
        step n (the scheduler state then holds version n + 1 and the freed clients' dispatch)."""
        live = _Live(self, executor, state.params, optimizer)
        step = self.scheduler.advance(self._rt["sched"], events=live, hooks=live)
        self._reap(executor)                   # stragglers cancelled by the trigger
        return step

    def _peek(self, queue: EventQueue) -> float:
        """The time of the next event already known (never blocks; +inf if none)."""
        if self.ordered or not self._inbox:
            return queue.peek_time()
        return min(self._inbox[0].time, queue.peek_time())

    def _next_event(self, queue: EventQueue, executor: Any) -> tuple | None:
        """The next event (a DONE event carries its :class:`_Arrival`); None when nothing can
        happen. Injected delays: the queue's next event, in virtual-time order, once it is
        real (see :meth:`_next_queued`). Otherwise the earliest of: a received update, a due
        timer/timeout, or (blocking in ``executor.wait`` until the next timer) the next
        arrival."""
        if self.ordered:
            return self._next_queued(queue, executor)
        while True:
            due = queue.peek_time()
            if self._inbox:                    # at equal times arrivals go first (as virtually)
                if due < self._inbox[0].time:
                    return queue.pop()
                arr = self._inbox.pop(0)
                return arr.time, DONE, arr.update.client_id, arr.serial, arr
            if due <= self._now():
                return queue.pop()
            jobs = [r.job for r in self._jobs.values() if r.job is not None]
            if not jobs and math.isinf(due):
                return None
            wait_s = None if math.isinf(due) else max(0.0, (due - self._now()) * self.unit_s)
            if not jobs:
                time.sleep(wait_s)
                continue
            updates, _ = executor.wait(jobs, num_returns=1, timeout=wait_s)
            t = self._now()
            for u in updates:                  # ordered by the workers' finishing times
                rec = self._jobs.pop(u.client_id)
                self._inbox.append(_Arrival(t, u, rec.serial, rec.params))

    def _next_queued(self, queue: EventQueue, executor: Any) -> tuple | None:
        """The queue's next event (virtual-time order, ties as on the virtual clock) once it
        has happened in real time: a job's arrival when its answer is in (blocking until it
        is; answers of later-scheduled jobs that come in meanwhile are kept for their turn), a
        timer or timeout once ``t · seconds_per_unit`` seconds have passed. Stale arrivals
        (jobs dropped since) pop at once; the scheduler skips them."""
        if not len(queue):
            return None
        t, kind, i, serial = queue.events[0]
        st = self._rt["sched"]
        live = (kind == DONE and bool(st["busy"][i])
                and int(st["job_count"][i]) - 1 == serial and i in self._jobs)
        if kind == DONE and not live:
            return queue.pop()
        if live:
            rec = self._jobs[i]
            while rec.answer is None:          # one ray.wait collects every answer ready
                waiting = [r.job for r in self._jobs.values()
                           if r.answer is None and r.job is not None]
                for u in executor.wait(waiting, num_returns=1, timeout=None)[0]:
                    self._jobs[u.client_id].answer = u
            del self._jobs[i]
            arrival = _Arrival(t, rec.answer, rec.serial, rec.params)
        self._sleep_until(t)
        ev = queue.pop()
        return (*ev, arrival) if live else ev

    def _sleep_until(self, t: float) -> None:
        """Block until clock time ``t`` (``t · unit`` seconds after the start)."""
        wait_s = t * self.unit_s - (time.monotonic() - self._origin)
        if wait_s > 0:
            time.sleep(wait_s)

    def _reap(self, executor: Any) -> None:
        """Cancel the Ray calls of jobs the scheduler dropped (timeouts, cancelled stragglers)."""
        st = self._rt["sched"]
        busy, job_count = st["busy"].numpy(), st["job_count"].numpy()
        gone = [i for i, r in self._jobs.items() if not busy[i] or job_count[i] - 1 != r.serial]
        jobs = [self._jobs.pop(i).job for i in gone]
        jobs = [j for j in jobs if j is not None]
        if jobs:
            executor.cancel(jobs)

    def _submit(self, groups: list[tuple[np.ndarray, int]], params: Params, executor: Any,
                optimizer: Any) -> None:
        """Start the dispatched jobs (``(clients, start version)`` groups) from ``params`` with
        their injected delays; jobs that never return are only tracked (until their timeout)."""
        job_count = self._rt["sched"]["job_count"].numpy()
        for clients, version in groups:
            delays = {int(i): self.clock.take_delay(int(i)) for i in clients}
            run = [i for i, d in delays.items() if math.isfinite(d)]
            jobs: list[RayJob] = []
            if run:
                jobs = executor.submit(params, np.asarray(run, dtype=np.int64), int(version),
                                       optimizer=self.alg.optimizer_at(int(version), optimizer),
                                       delay_s=lambda c, _key: delays[int(c)])
            by_client = {int(j.client_ids[0]): j for j in jobs}
            for i in delays:
                self._jobs[i] = _InFlight(by_client.get(i), int(version), int(job_count[i]) - 1,
                                          params)

    def _combine(self, step: Step, w: np.ndarray, current: Params, policy: str = "error"
                 ) -> tuple[Params | None, float | None, int]:
        """``Σ_i ω_i Δ_i`` ("delta") or ``Σ_i ω_i (θ^{ρ_i} + Δ_i − θ^n)`` ("model"), the local
        loss ``Σ_i ω_i L_i / Σ_i ω_i`` of the aggregated updates (as on the virtual clock; None
        when no weight is positive) and the number of arrivals left out as non-finite.

        Non-finite arrivals (flagged by the workers) follow ``policy`` as on the virtual clock:
        ``"error"`` raises one :class:`~fedopt.engine.nonfinite.NonFiniteError` naming them and
        their start rounds; ``"drop"`` leaves them out, renormalises the sum once over the kept
        arrivals (:func:`~fedopt.engine.executor.drop_scale`) and counts them in
        ``totals["nonfinite_dropped"]`` (cumulative, checkpointed); the sum is None when none is
        kept."""
        arrivals = [self._arrived.pop((i, serial))
                    for i, serial in zip(step.clients.tolist(), step.jobs.tolist())]
        lost = np.array([bool(a.update.nonfinite) for a in arrivals], dtype=bool)
        if lost.any() and policy != "drop":
            raise client_error(step.clients[lost], step.versions[lost])
        total, loss = ParamSum(), WeightedMean()
        for k, arr in enumerate(arrivals):
            if lost[k]:
                continue
            term = arr.update.delta
            if self.alg.combine == "model":
                term = {n: term[n] + (arr.base[n] - current[n]) for n in term}
            wk = float(w[k])
            total.add(term, wk)
            loss.add(wk * float(arr.update.mean_loss), wk)
        acc, mean_loss = renormalized(self._rt, total, loss, w, lost)
        return acc, mean_loss, int(lost.sum())
