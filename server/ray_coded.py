"""Coded gradient tasks on the Ray pool: one call per worker actor and round, answers per coded
worker as they come (gradient coding, sequential gradient coding).

The master of a coded run (:mod:`fedopt.algorithms.gradient_coding`,
:mod:`fedopt.algorithms.sequential_coding`) has n *coded workers* per round, each with a few
tasks r = Σ_c a_c g_c(θ_j) (a coded combination of client gradients at a job's parameters)::

    call = executor.submit_coded(params_list, tasks, job_keys=None, delays=...)
    arrivals, lost = executor.wait_coded(call, timeout=None)   # the next answers, in time order
    executor.cancel_coded(call)                                  # the rest are not needed

Coded worker i runs on actor slot ``pool.assign([i])`` (i mod W while every actor lives): all
coded workers of one actor go in ONE actor call (:meth:`fedopt.client.ray_worker.ShardWorker.
coded_tasks`, a streaming generator), which computes each client gradient it needs once per job
(vectorized) and then releases one answer per coded worker at its injected delay; the master
takes the first responders with ``ray.wait`` over the W generators. The parameters of every job
go into the object store once per round. A coded worker whose actor dies before it answered is
*lost* (reported to the caller, who treats it as a straggler that never returns: gradient coding
tolerates it when the code still decodes); the actor is restarted for the next round and the
death counted in the fault log.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedopt.engine.contract import CodedAnswer, Params
from fedopt.protocols.ray_messages import to_arrays, to_tensors
from fedopt.server.faults import failure_cause
from fedopt.server.ray_pool import WorkerPool, death_errors

_ids = itertools.count()


@dataclass(eq=False)
class CodedCall:
    """One round's coded tasks in flight: per actor slot its generator, actor and the coded
    workers it still owes."""

    call_id: str
    key: int
    started: float
    device: torch.device
    gens: dict[int, tuple[Any, Any, list[int]]] = field(default_factory=dict)
    lost: list[int] = field(default_factory=list)

    @property
    def pending(self) -> list[int]:
        """Coded workers that have neither answered nor been lost."""
        return sorted(w for _, _, owed in self.gens.values() for w in owed)


class CodedDispatcher:
    """``submit`` / ``wait`` / ``cancel`` of coded tasks over a worker pool (module doc)."""

    def __init__(self, ray: Any, pool: WorkerPool):
        self.ray, self.pool = ray, pool

    def submit(self, params_list: list[Params], tasks: list[tuple[int, list[tuple]]], key: int,
               job_keys: list[int] | None = None, delays: np.ndarray | None = None) -> CodedCall:
        """Start one round: ``tasks`` = ``[(worker, [(job, client_ids, coefs), ...]), ...]``
        (job: index into ``params_list``), ``delays[worker]`` seconds (None: real compute
        times), ``job_keys`` for minibatch gradients (None: full local gradients)."""
        ray = self.ray
        ref = next(iter(params_list[0].values()))
        refs = ray.put([to_arrays(p) for p in params_list])
        workers = np.array([w for w, _ in tasks], dtype=np.int64)
        slots = self.pool.assign(workers)
        call = CodedCall(call_id=f"coded-{next(_ids)}", key=int(key), started=time.monotonic(),
                         device=ref.device)
        for s in np.unique(slots):
            mine = [tasks[k] for k in np.flatnonzero(slots == s)]
            d = None if delays is None else [float(delays[w]) for w, _ in mine]
            actor = self.pool.actor(int(s))
            gen = actor.coded_tasks.options(num_returns="streaming").remote(
                call.call_id, refs, mine, job_keys, d)
            call.gens[int(s)] = (gen, actor, [int(w) for w, _ in mine])
        return call

    def wait(self, call: CodedCall, timeout: float | None = None
             ) -> tuple[list[CodedAnswer], list[int]]:
        """The answers ready within ``timeout`` seconds (at least one unless it passes; every
        ready one), ordered by the workers' finishing times, and the coded workers lost since
        the last call (their actor died)."""
        ray = self.ray
        live = {slot: g for slot, g in call.gens.items() if g[2]}
        if not live:
            return [], []
        by_gen = {g[0]: slot for slot, g in live.items()}
        ready, _ = ray.wait(list(by_gen), num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(list(by_gen), num_returns=len(by_gen), timeout=0)
        answers, lost = [], []
        for gen in ready:
            slot = by_gen[gen]
            _, actor, owed = call.gens[slot]
            try:
                msg = ray.get(next(gen))
            except (StopIteration, *death_errors()) as e:
                why = "ended early" if isinstance(e, StopIteration) else failure_cause(e)
                self.pool.faults.record("worker_deaths", round_idx=call.key, slot=slot,
                                        clients=np.array(owed),
                                        detail=f"coded tasks: {why}")
                self.pool.restart_if_current(slot, actor, "died", call.key)
                lost += owed
                call.lost += owed
                call.gens[slot] = (gen, actor, [])
                continue
            owed.remove(int(msg["worker"]))
            answers.append(CodedAnswer(
                worker=int(msg["worker"]),
                results=to_tensors(msg["results"], call.device, torch.float64),
                finite=bool(msg["finite"]), compute_s=float(msg["compute_s"]),
                finished_at=float(msg["finished_at"])))
        answers.sort(key=lambda a: (a.finished_at, a.worker))
        return answers, lost

    def cancel(self, call: CodedCall) -> None:
        """Release every actor still holding answers of ``call`` (they are not read)."""
        for slot, (gen, actor, owed) in call.gens.items():
            if owed:
                try:
                    actor.release.remote(call.call_id)
                except Exception:       # a dead actor holds nothing
                    pass
                call.gens[slot] = (gen, actor, [])
