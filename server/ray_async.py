"""Real-time asynchronous dispatch on the Ray pool: submit clients, collect them as they finish.

For asynchronous algorithms (FedAsync, FedBuff, FedFix, ...) running on real actors::

    jobs = executor.submit(x_v, ids, key=v)                   # clients start from model version v
    updates, jobs = executor.wait(jobs, num_returns=1)          # the first one(s) to finish
    for u in updates:                                          # u.delta = y_{i,K} − x_v, u.key = v
        ...aggregate, then submit new clients from the new model...

Each job is one actor call (one client by default; ``group=True`` makes one vectorized job per
worker whose clients all arrive together). Jobs finish in real time, in the order Ray reports
them (``ray.wait``); an injected delay ``delay_s(client_id, job_key) -> seconds`` (e.g. a
virtual-clock compute-time model, with ``job_key`` = the ``key`` given to ``submit``)
holds a job's answer until that many seconds after it started on its worker, so straggler
studies run on real actors. A job whose worker dies is resubmitted (on a replacement or a live
worker) and counted once; its late duplicate, if any, is never read; one that dies more than
``executor.max_retries`` times raises :class:`~server.faults.WorkerFailedError` (the
decision is :class:`fedopt.server.dispatch.DispatchPolicy`'s, as for synchronous calls). Clients
whose results are NaN/±inf come back flagged (``ClientUpdate.nonfinite``, from the worker's check):
the caller applies the run's ``on_nonfinite`` (:mod:`fedopt.server.realtime`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from fedopt.engine.contract import ClientUpdate, DelayFn
from fedopt.protocols.ray_messages import Arrays, Params, share, to_arrays, to_tensors
from fedopt.server.dispatch import Action, DispatchPolicy
from fedopt.server.faults import WorkerFailedError, failure_cause
from fedopt.server.ray_pool import WorkerPool, death_errors

__all__ = ["AsyncDispatcher", "ClientUpdate", "DelayFn", "RayJob", "delay_from_clock"]


def delay_from_clock(clock: Any, seconds_per_unit: float = 1.0, state: dict | None = None,
                     cap_s: float = 3600.0) -> DelayFn:
    """``delay_s(client_id, job)`` from a virtual clock (:class:`fedopt.clock.VirtualClock` or
    anything with ``work(clients, jobs, state) -> virtual times``): the online work w_{i,j} of
    client i's job j, in seconds (``seconds_per_unit`` per virtual time unit). A job that never
    returns (+inf) is held ``cap_s`` seconds, so ``executor.round_timeout_s`` treats it as a
    straggler. ``state``: the clock's mutable state (bursty laws), default its initial state."""
    st = clock.init_state() if state is None and hasattr(clock, "init_state") else (state or {})

    def delay_s(client_id: int, job: int) -> float:
        w = float(clock.work(np.array([client_id], dtype=np.int64),
                             np.array([job], dtype=np.int64), st)[0])
        return min(cap_s, w * seconds_per_unit) if w == w else cap_s

    return delay_s


@dataclass(eq=False)          # jobs compare by identity (they hold arrays and refs)
class RayJob:
    """One in-flight actor call: clients, the key (model version) they started from, where it
    runs."""

    client_ids: np.ndarray
    key: int
    slot: int
    ref: Any
    actor: Any
    params: Params
    params_ref: Any            # the object-store ref of the start model, or its small arrays
    optimizer: Any
    correction: Arrays | None
    delay_s: float
    submitted_at: float
    attempts: int = 0


class AsyncDispatcher:
    """``submit``/``wait``/``cancel`` over a worker pool (see module doc); a dead job's fate is
    ``policy``'s; ``default_delay()`` gives the delay function of jobs submitted without one."""

    def __init__(self, ray: Any, pool: WorkerPool, policy: DispatchPolicy,
                 default_delay: Callable[[], DelayFn | None] = lambda: None):
        self.ray, self.pool, self.policy = ray, pool, policy
        self.default_delay = default_delay

    def _launch(self, job: RayJob, exclude: set[int] = frozenset()) -> None:
        pool = self.pool
        slot = int(pool.assign(job.client_ids[:1], exclude)[0])
        actor = pool.actor(slot)
        job.slot, job.actor = slot, actor
        m = len(job.client_ids)
        job.ref = actor.run_jobs.remote(job.params_ref, None, job.client_ids,
                                        np.full(m, job.key, dtype=np.int64), np.ones(m),
                                        job.optimizer, True, job.correction, job.delay_s)

    def submit(self, params: Params, client_ids, key: int, *, optimizer=None,
               correction: Params | None = None, delay_s: DelayFn | None = None,
               group: bool = False) -> list[RayJob]:
        """Start local training of ``client_ids`` from ``params``; returns jobs. The model goes
        into the object store once for all of them, or inside each job's task when it is small
        (:func:`~fedopt.protocols.ray_messages.share`).

        ``key`` keys the minibatch plan (and the delay function); ``correction`` is
        stacked per client in ``client_ids`` order; ``delay_s`` defaults to the executor's.
        """
        ids = np.asarray(client_ids, dtype=np.int64)
        params_ref = share(self.ray, to_arrays(params))
        corr = to_arrays(correction)
        fn = delay_s if delay_s is not None else self.default_delay()
        pool = self.pool
        if group:
            slots = pool.assign(ids)
            groups = [np.flatnonzero(slots == s) for s in np.unique(slots)]
        else:
            groups = [np.array([p]) for p in range(len(ids))]
        jobs = []
        now = time.monotonic()
        for pos in groups:
            gids = ids[pos]
            delay = max((float(fn(int(c), int(key))) for c in gids), default=0.0) if fn else 0.0
            job = RayJob(client_ids=gids, key=int(key), slot=-1, ref=None, actor=None,
                         params=params, params_ref=params_ref, optimizer=optimizer,
                         correction=None if corr is None else {k: v[pos] for k, v in corr.items()},
                         delay_s=delay, submitted_at=now)
            self._launch(job)
            jobs.append(job)
        return jobs

    def _updates(self, job: RayJob, res) -> list[ClientUpdate]:
        """The job's client updates; clients the worker found non-finite are flagged
        (``nonfinite``, their mean loss NaN), the others' mean loss is over the finite ones (the
        worker's sums leave the non-finite clients out)."""
        ref = next(iter(job.params.values()))
        local = to_tensors(res.local_params, ref.device, ref.dtype)
        bad = np.zeros(len(job.client_ids), dtype=bool)     # res.nonfinite: job positions
        bad[np.asarray(res.nonfinite, dtype=np.int64)] = True
        kept_w = float(np.sum(~bad))            # the job's clients are submitted with weight 1
        mean_loss = res.loss_sum / max(kept_w, 1e-300)
        elapsed = time.monotonic() - job.submitted_at
        return [ClientUpdate(client_id=int(c), key=job.key,
                             delta={k: local[k][i] - job.params[k] for k in job.params},
                             mean_loss=math.nan if bad[i] else mean_loss, samples=res.samples,
                             slot=job.slot, elapsed_s=elapsed, compute_s=res.compute_s,
                             finished_at=res.finished_at, nonfinite=bool(bad[i]))
                for i, c in enumerate(job.client_ids)]

    def wait(self, jobs: list[RayJob], num_returns: int = 1, timeout: float | None = None
             ) -> tuple[list[ClientUpdate], list[RayJob]]:
        """Block until ``num_returns`` of ``jobs`` finished (or ``timeout`` s passed); returns
        their client updates (ordered by finishing time) and the jobs still pending.

        A job whose worker died is resubmitted (up to ``max_retries`` times) and stays pending.
        """
        ray, faults = self.ray, self.pool.faults
        pending = list(jobs)
        finished: list[tuple[RayJob, Any]] = []
        deadline = None if timeout is None else time.monotonic() + timeout
        want = min(num_returns, len(pending))
        while pending and len(finished) < want:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            refs = [j.ref for j in pending]
            ready, _ = ray.wait(refs, num_returns=1, timeout=left)
            if not ready:
                break
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            ready_set = set(ready)
            for job in [j for j in pending if j.ref in ready_set]:
                try:
                    res = ray.get(job.ref)
                except death_errors() as e:
                    faults.record("worker_deaths", round_idx=job.key, slot=job.slot,
                                  clients=job.client_ids, detail=f"async job: {type(e).__name__}")
                    self.pool.restart_if_current(job.slot, job.actor, "died", job.key)
                    if self.policy.on_failure(job.attempts).action is Action.FAIL:
                        raise WorkerFailedError(
                            clients=job.client_ids, round_idx=job.key, slot=job.slot,
                            attempts=job.attempts + 1, max_retries=self.policy.max_retries,
                            cause=failure_cause(e)) from e
                    job.attempts += 1
                    faults.record("retried_shards", round_idx=job.key, slot=job.slot,
                                  clients=job.client_ids, detail="async job resubmitted")
                    self._launch(job, exclude={job.slot})
                    continue
                pending.remove(job)
                finished.append((job, res))
        finished.sort(key=lambda jr: jr[1].finished_at)
        updates = [u for job, res in finished for u in self._updates(job, res)]
        return updates, pending

    def cancel(self, jobs: list[RayJob]) -> None:
        """Forget ``jobs``: queued calls are cancelled, running ones finish unread."""
        for job in jobs:
            try:
                self.ray.cancel(job.ref)
            except Exception:
                pass
