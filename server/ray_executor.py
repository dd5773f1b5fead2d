"""The Ray executor: the coordinator side of "a coordinator and GPU workers talking via Ray actors".

It has the in-process executor's interface, so every algorithm runs on it unchanged::

    out = executor.run_round(params, client_ids, weights, round_idx, optimizer=...,
                             keep_local=False, correction=None)      # -> RoundOutput
    executor.close()

One round: the global parameters go into Ray's object store once (``ray.put`` of numpy arrays;
workers map them zero-copy); client ``i`` runs on worker ``i mod W`` (or a live substitute, see
:mod:`server.ray_pool`); each worker trains its clients vectorized and answers with its shard's
Σ_i w_i Δ_i, Σ_i w_i, Σ_i w_i·loss_i (and the stacked y_{i,K} when ``keep_local``); the
coordinator adds the W partial sums. The minibatch plan is keyed by (seed, round, client), so the
result equals the in-process executor's up to float summation order.

Faults (counters in :attr:`RayExecutor.faults`, incidents in :attr:`RayExecutor.fault_events`):

* a worker that dies mid-round: its whole shard is re-sent — to live workers at once, while a
  replacement actor starts in the background — up to ``executor.max_retries`` times (then
  :class:`~server.ray_faults.WorkerFailedError`); its partial work is never read, so every
  client update is counted exactly once and the round's result equals the fault-free one;
* a call that runs past ``executor.round_timeout_s`` (per call): the worker is a straggler; it is
  killed and replaced (a hung worker would stall later rounds) and its clients are handled by
  the straggler policy ``on_timeout``:

  - ``"drop"`` (default, FedAvg's rule): the round goes on without them and the aggregate is
    renormalized over the clients that returned — delta_sum and loss_sum are scaled by
    Σ_{all} w / Σ_{returned} w, so the server step is FedAvg over the returned clients and
    ``weight_sum`` stays Σ_{all} w; ``updates``/``samples`` count only returned clients;
  - ``"retry"``: re-sent like a dead worker's shard; dropped once retries are exhausted.

  With ``keep_local=True`` (per-client results are needed) stragglers are always retried, and a
  round is never left without any client: if everything was dropped, it is re-sent.

Non-finite clients (NaN/±inf results) are found on the workers, by the in-process executor's own
check, left out of each shard's sums and their ids sent back (``ShardResult.nonfinite``); the
coordinator applies the run's ``on_nonfinite`` to the whole round: ``"error"`` raises one
:class:`~fedopt.engine.nonfinite.NonFiniteError` naming them, ``"drop"`` renormalises over the
clients that returned finite results, with the same :func:`~fedopt.engine.executor.drop_scale`
as for stragglers (``RoundOutput.nonfinite`` lists them).
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from protocols.ray_messages import Params, ShardResult, to_arrays, to_tensors
from client.ray_worker import WorkerSpec
from client.shard import data_fingerprint
from fedopt.data import FederatedDataset
from fedopt.engine.executor import RoundOutput, drop_scale
from fedopt.engine.local import LocalTrainer
from fedopt.engine.program import check_shippable
from fedopt.engine.nonfinite import POLICIES, check_policy, client_error
from server.ray_async import AsyncDispatcher, ClientUpdate, DelayFn, RayJob
from server.ray_connect import RaySession, connect_ray
from server.ray_faults import FaultLog, WorkerFailedError, failure_cause
from server.ray_pool import WorkerPool, death_errors, gpu_plan

log = logging.getLogger("server.ray")

TIMEOUT_POLICIES = ("drop", "retry")


@dataclass(eq=False)
class _Task:
    """One in-flight shard call of a round."""

    positions: np.ndarray        # indices into the round's client_ids
    slot: int
    actor: Any
    ref: Any
    attempt: int
    deadline: float | None


@dataclass
class RoundReport:
    """What happened in the last ``run_round``: timing and incidents."""

    round_idx: int
    wall_s: float = 0.0
    compute_s: list[float] = field(default_factory=list)   # per returned shard
    slots: list[int] = field(default_factory=list)         # slot of each returned shard
    retried: int = 0
    dropped: list[int] = field(default_factory=list)       # client ids left out

    @property
    def overhead_s(self) -> float:
        """Round wall time minus the slowest shard's training time (transport + scheduling)."""
        return self.wall_s - max(self.compute_s, default=0.0)


def _model_to_ship(config: dict, dataset: FederatedDataset, trainer: LocalTrainer):
    """None when ``config["model"]`` rebuilds the coordinator's module (workers build it from
    the config), else a CPU copy of the module (a user model), shipped once at start-up."""
    from fedopt.models import build_model

    module = trainer.fmodel.module
    try:
        built = build_model(config["model"], tuple(dataset.feature_shape), dataset.num_classes,
                            seed=config["seed"])
    except Exception:
        built = None
    if built is not None and repr(built) == repr(module):
        shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        if shapes == {k: tuple(v.shape) for k, v in built.state_dict().items()}:
            return None
    return copy.deepcopy(module).to("cpu")


class RayExecutor:
    """Runs rounds on a pool of Ray worker actors (see the module docstring)."""

    def __init__(self, pool: WorkerPool, session: RaySession, trainer: LocalTrainer, *,
                 batch_size: int, local_steps: int | None, local_epochs: int | None,
                 round_timeout_s: float | None = None, max_retries: int = 2,
                 on_timeout: str = "drop", chunk_size: int | None = None,
                 delay_s: DelayFn | None = None, on_nonfinite: str = "error"):
        import ray

        if on_timeout not in TIMEOUT_POLICIES:
            raise ValueError(f"on_timeout: one of {TIMEOUT_POLICIES}, got {on_timeout!r}")
        if on_nonfinite not in POLICIES:
            raise ValueError(f"on_nonfinite: one of {POLICIES}, got {on_nonfinite!r}")
        #: the run's policy for clients with non-finite results (applied here, per round)
        self.on_nonfinite = on_nonfinite
        self.ray = ray
        self.pool = pool
        self.session = session
        #: the coordinator's trainer; workers run the same class with its local program
        self.trainer = trainer
        #: local-work settings (algorithms such as SCAFFOLD read them)
        self.batch_size, self.local_steps, self.local_epochs = batch_size, local_steps, local_epochs
        self.round_timeout_s = round_timeout_s
        self.max_retries = int(max_retries)
        self.on_timeout = on_timeout
        self.chunk_size = chunk_size
        #: optional injected compute time ``delay_s(client_id, round_idx) -> seconds``: a job's
        #: answer is held until that long after it started (a shard waits for its slowest client)
        self.delay_s: DelayFn | None = delay_s
        self.faults_log = pool.faults
        self.last_report: RoundReport | None = None
        self._async = AsyncDispatcher(self)
        self._closed = False

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: dict[str, Any], dataset: FederatedDataset, trainer: LocalTrainer,
                    **options: Any) -> "RayExecutor":
        """Connect to Ray (``executor.address``), place and start ``executor.num_workers`` actors.

        ``dataset`` (the coordinator's) is only fingerprinted, never shipped: workers build their
        shards from ``config["data"]``. ``options``: ``on_timeout``, ``delay_s``, ``strategy``
        (``"SPREAD"``/``"PACK"``), ``placement_timeout_s``, ``start_timeout_s``,
        ``max_restarts_per_worker``, ``log_to_driver``.
        """
        ex = config["executor"]
        session = connect_ray(ex["address"], log_to_driver=options.pop("log_to_driver", True))
        try:
            import ray

            device, num_gpus, note = gpu_plan(ex["device"], float(ex["num_gpus_per_worker"]),
                                              float(ray.cluster_resources().get("GPU", 0)))
            if note:
                log.warning(note)
            threads = ex["num_threads"] or max(1, int(ex["num_cpus_per_worker"]))
            check_shippable(trainer.program)   # a user's loss/metric must pickle: say which
            spec = WorkerSpec(config=copy.deepcopy(config), device=device,
                              optimizer=trainer.optimizer, trainer_class=type(trainer),
                              program=trainer.program, trainer_seed=trainer.seed,
                              model=_model_to_ship(config, dataset, trainer), num_threads=threads)
            pool_opts = {k: options.pop(k) for k in ("strategy", "placement_timeout_s",
                                                     "start_timeout_s", "max_restarts_per_worker")
                         if k in options}
            pool = WorkerPool(spec, num_clients=dataset.num_clients, num_workers=ex["num_workers"],
                              num_cpus_per_worker=ex["num_cpus_per_worker"],
                              num_gpus_per_worker=num_gpus, faults=FaultLog(),
                              expected_fingerprint=data_fingerprint(dataset), **pool_opts)
            pool.start()
        except BaseException:
            if session.started:
                import ray

                ray.shutdown()
            raise
        client = config["client"]
        return cls(pool, session, trainer, batch_size=client["batch_size"],
                   local_steps=client["local_steps"], local_epochs=client["local_epochs"],
                   round_timeout_s=ex["round_timeout_s"],
                   max_retries=ex["max_retries"], chunk_size=ex["chunk_size"],
                   **{"on_timeout": ex["on_timeout"],
                      "on_nonfinite": check_policy(config.get("on_nonfinite", "error")),
                      **options})

    # -- reporting --------------------------------------------------------------------------------
    @property
    def faults(self) -> dict[str, int]:
        """Cumulative fault counters (worker_deaths, timeouts, restarts, retried_shards,
        dropped_clients) — what a run log should record."""
        return self.faults_log.summary()

    @property
    def fault_events(self) -> list[dict[str, Any]]:
        return self.faults_log.to_dicts()

    @property
    def workers(self) -> list[dict[str, Any]]:
        """Per slot: state, node id, pid, device, threads (from the worker's handshake)."""
        return [{"slot": s.index, "state": s.state, **{k: v for k, v in s.info.items()
                                                        if k != "fingerprint"}}
                for s in self.pool.slots]

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait for replacement workers to finish starting; True when all are ready."""
        return self.pool.wait_ready(timeout)

    # -- scatter / gather with fault handling ---------------------------------------------------
    def _restart_if_current(self, slot: int, actor: Any, reason: str, round_idx: int | None) -> None:
        if self.pool.slots[slot].actor is actor:
            self.pool.restart(slot, reason, round_idx)

    def _delay(self, ids: np.ndarray, round_idx: int) -> float:
        if self.delay_s is None:
            return 0.0
        return max((float(self.delay_s(int(c), int(round_idx))) for c in ids), default=0.0)

    def _scatter_gather(self, ids: np.ndarray, call: Callable[[Any, np.ndarray], Any],
                        round_idx: int, report: RoundReport, may_drop: bool
                        ) -> list[tuple[_Task, Any]]:
        """Run ``call(actor, positions)`` for each worker's share of ``ids``, survive deaths and
        timeouts (module docstring); returns (task, result) pairs, each client in exactly one."""
        pending: dict[Any, _Task] = {}
        results: list[tuple[_Task, Any]] = []

        def launch(positions: np.ndarray, attempt: int, exclude: set[int] = frozenset()) -> None:
            slots = self.pool.assign(ids[positions], exclude)
            for s in np.unique(slots):
                pos = positions[slots == s]
                actor = self.pool.actor(int(s))
                ref = call(actor, pos)
                deadline = (None if self.round_timeout_s is None
                            else time.monotonic() + float(self.round_timeout_s))
                pending[ref] = _Task(pos, int(s), actor, ref, attempt, deadline)

        def retry(task: _Task, reason: str) -> bool:
            """Re-send ``task``'s clients; False when its retries are used up."""
            if task.attempt >= self.max_retries:
                return False
            report.retried += 1
            self.faults_log.record("retried_shards", round_idx=round_idx, slot=task.slot,
                                   clients=ids[task.positions], detail=reason)
            launch(task.positions, task.attempt + 1, exclude={task.slot})
            return True

        def drop(task: _Task) -> None:
            if not results and not pending and retry(task, "nothing returned: re-sent"):
                return
            report.dropped.extend(ids[task.positions].tolist())
            self.faults_log.record("dropped_clients", round_idx=round_idx, slot=task.slot,
                                   clients=ids[task.positions], count=len(task.positions),
                                   detail="straggler dropped (on_timeout='drop')")

        launch(np.arange(len(ids)), 0)
        while pending:
            deadlines = [t.deadline for t in pending.values() if t.deadline is not None]
            wait_s = None if not deadlines else max(0.0, min(deadlines) - time.monotonic())
            refs = list(pending)
            ready, _ = self.ray.wait(refs, num_returns=1, timeout=wait_s)
            if ready:
                ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                task = pending.pop(ref)
                try:
                    results.append((task, self.ray.get(ref)))
                except death_errors() as e:
                    self.faults_log.record("worker_deaths", round_idx=round_idx, slot=task.slot,
                                           clients=ids[task.positions], detail=type(e).__name__)
                    self._restart_if_current(task.slot, task.actor, "died", round_idx)
                    if not retry(task, "worker died: shard re-sent"):
                        raise WorkerFailedError(
                            clients=ids[task.positions], round_idx=round_idx, slot=task.slot,
                            attempts=task.attempt + 1, max_retries=self.max_retries,
                            cause=failure_cause(e)) from e
            now = time.monotonic()
            for ref, task in list(pending.items()):
                if task.deadline is None or now < task.deadline:
                    continue
                pending.pop(ref)
                self.faults_log.record("timeouts", round_idx=round_idx, slot=task.slot,
                                       clients=ids[task.positions],
                                       detail=f"no answer within round_timeout_s={self.round_timeout_s}")
                self._restart_if_current(task.slot, task.actor, "timed out", round_idx)
                if not may_drop:
                    if not retry(task, "straggler re-sent (per-client results required)"):
                        raise WorkerFailedError(
                            clients=ids[task.positions], round_idx=round_idx, slot=task.slot,
                            attempts=task.attempt + 1, max_retries=self.max_retries,
                            what="timed out",
                            cause=f"no answer within executor.round_timeout_s="
                                  f"{self.round_timeout_s}, and this algorithm needs every "
                                  f"client's result")
                elif not (self.on_timeout == "retry" and retry(task, "straggler re-sent")):
                    drop(task)
        results.sort(key=lambda tr: int(tr[0].positions[0]))
        return results

    # -- the synchronous round ------------------------------------------------------------------
    def run_round(self, params: Params, client_ids: np.ndarray, weights: np.ndarray,
                  round_idx: int, optimizer=None, keep_local: bool = False,
                  correction: Params | None = None) -> RoundOutput:
        """Local training of ``client_ids`` from ``params`` on the workers; Σ_i w_i Δ_i.

        Same contract as :meth:`VectorizedExecutor.run_round` (``correction`` stacked
        [m, ...] in ``client_ids`` order; ``keep_local`` returns the stacked y_{i,K}).
        """
        if self._closed:
            raise RuntimeError("RayExecutor.run_round: the executor is closed")
        start = time.perf_counter()
        ids = np.asarray(client_ids, dtype=np.int64)
        w = np.asarray(weights, dtype=np.float64)
        report = RoundReport(int(round_idx))
        params_ref = self.ray.put(to_arrays(params))          # once per round, shared by all
        corr = to_arrays(correction)

        def call(actor: Any, pos: np.ndarray) -> Any:
            c = None if corr is None else {k: v[pos] for k, v in corr.items()}
            return actor.run_shard.remote(params_ref, ids[pos], w[pos], int(round_idx), optimizer,
                                          keep_local, c, self._delay(ids[pos], round_idx))

        results = self._scatter_gather(ids, call, int(round_idx), report, may_drop=not keep_local)
        out = self._combine(results, ids, w, next(iter(params.values())), keep_local, report)
        report.wall_s = time.perf_counter() - start
        self.last_report = report
        return out

    def full_gradients(self, params: Params, client_ids: np.ndarray) -> Params:
        """Stacked ∇F_i(x) over each client's full local data, computed on the workers
        (what SCAFFOLD option I asks a remote executor for)."""
        ids = np.asarray(client_ids, dtype=np.int64)
        params_ref = self.ray.put(to_arrays(params))
        results = self._scatter_gather(
            ids, lambda actor, pos: actor.full_gradients.remote(params_ref, ids[pos]),
            -1, RoundReport(-1), may_drop=False)
        ref_t = next(iter(params.values()))
        out: Params = {k: v.new_empty((len(ids),) + tuple(v.shape)) for k, v in params.items()}
        for task, arrays in results:
            g = to_tensors(arrays, ref_t.device, ref_t.dtype)
            pos = torch.as_tensor(task.positions, device=ref_t.device)
            for k in out:
                out[k][pos] = g[k]
        return out

    def _combine(self, results: list[tuple[_Task, ShardResult]], ids: np.ndarray, w: np.ndarray,
                 ref_t: torch.Tensor, keep_local: bool, report: RoundReport) -> RoundOutput:
        """Σ of the shards' partial sums (in client order), renormalized if clients were dropped
        (stragglers, or non-finite clients under ``on_nonfinite="drop"``); raises
        :class:`~fedopt.engine.nonfinite.NonFiniteError` for non-finite clients under
        ``"error"``."""
        dev, dt = ref_t.device, ref_t.dtype
        delta_sum: Params | None = None
        local: Params | None = None
        loss_sum, samples, updates, w_returned = 0.0, 0, 0, 0.0
        steps = np.zeros(len(ids), dtype=np.int64)
        local_loss = np.zeros(len(ids)) if keep_local else None
        nonfinite: list[np.ndarray] = []
        for task, res in results:
            d = to_tensors(res.delta_sum, dev, dt)
            delta_sum = d if delta_sum is None else {k: delta_sum[k] + d[k] for k in d}
            loss_sum += res.loss_sum
            samples += res.samples
            updates += res.updates
            w_returned += float(np.sum(w[task.positions]))
            bad = np.asarray(getattr(res, "nonfinite", ()), dtype=np.int64)
            if len(bad):
                nonfinite.append(bad)
                w_returned -= float(np.sum(w[task.positions][np.isin(ids[task.positions], bad)]))
            steps[task.positions] = res.steps
            if keep_local:
                local_loss[task.positions] = res.local_loss
            report.compute_s.append(res.compute_s)
            report.slots.append(task.slot)
            if self.chunk_size is None:
                self.chunk_size = res.worker.get("chunk_size")
            if keep_local:
                y = to_tensors(res.local_params, dev, dt)
                if local is None:
                    local = {k: v.new_empty((len(ids),) + tuple(v.shape[1:])) for k, v in y.items()}
                pos = torch.as_tensor(task.positions, device=dev)
                for k, v in y.items():
                    local[k][pos] = v
        weight_sum = float(np.sum(w))
        bad_ids = np.sort(np.concatenate(nonfinite)) if nonfinite else np.zeros(0, np.int64)
        if len(bad_ids) and self.on_nonfinite == "error":
            raise client_error(bad_ids, report.round_idx)
        if report.dropped or len(bad_ids):
            scale = drop_scale(weight_sum, w_returned)
            if scale != 1.0:
                delta_sum = {k: v * scale for k, v in delta_sum.items()}
                loss_sum *= scale
        return RoundOutput(delta_sum=delta_sum, weight_sum=weight_sum, loss_sum=loss_sum,
                           samples=samples, updates=updates, local_params=local, steps=steps,
                           local_loss=local_loss, nonfinite=bad_ids)

    # -- asynchronous, real time ------------------------------------------------------------------
    def submit(self, params: Params, client_ids, round_idx: int, *, optimizer=None,
               correction: Params | None = None, delay_s: DelayFn | None = None,
               group: bool = False) -> list[RayJob]:
        """Start clients now; collect them with :meth:`wait` (see :mod:`server.ray_async`)."""
        return self._async.submit(params, client_ids, round_idx, optimizer=optimizer,
                                  correction=correction, delay_s=delay_s, group=group)

    def wait(self, jobs: list[RayJob], num_returns: int = 1, timeout: float | None = None
             ) -> tuple[list[ClientUpdate], list[RayJob]]:
        """The first ``num_returns`` jobs to finish (``ray.wait``) as client updates, and the rest."""
        return self._async.wait(jobs, num_returns, timeout)

    def cancel(self, jobs: list[RayJob]) -> None:
        self._async.cancel(jobs)

    # -- shutdown ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Kill the actors and free their placement; shut Ray down only if this executor
        started (or connected) it. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self.pool.close()
        if self.session.started and self.ray.is_initialized():
            self.ray.shutdown()

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
