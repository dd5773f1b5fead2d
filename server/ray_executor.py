"""The Ray executor: the coordinator side of "a coordinator and GPU workers talking via Ray actors".

It implements the whole executor contract (:class:`~fedopt.engine.contract.LiveExecutor`), so
every algorithm runs on it unchanged::

    out = executor.run_jobs(starts, client_ids, keys, weights, optimizer=...,
                            correction=None, keep_local=False)        # -> RoundOutput
    grads = executor.full_gradients(params, client_ids)               # stacked ∇F_i(x)
    row = executor.evaluate(params, train=False)                      # test_loss, ...
    jobs = executor.submit(params, ids, key); updates, jobs = executor.wait(jobs)
    executor.close()

One call: the start parameters go into Ray's object store once (``ray.put`` of numpy arrays —
the one shared model of a synchronous round, or the stacked ``[m, ...]`` per-job starts;
workers map them zero-copy and take their rows; up to
:data:`~fedopt.protocols.ray_messages.INLINE_BYTES` they travel inside the tasks instead,
:func:`~fedopt.protocols.ray_messages.share`); job j runs on worker ``client_ids[j] mod W``
(or a live substitute, see :mod:`fedopt.server.ray_pool`); each worker trains its jobs vectorized and
answers with its shard's Σ_j w_j Δ_j, Σ_j w_j, Σ_j w_j·loss_j (and the stacked y_j when
``keep_local``); the coordinator adds the W partial sums. Minibatch plans are keyed by
(seed, key, client), so the result equals the in-process executor's up to float summation
order. Evaluation runs on the coordinator, which holds the test rows (the same code and bits
as in-process).

Failed and late shards (a worker that dies, a call past ``executor.round_timeout_s``) are
handled by :mod:`fedopt.server.dispatch` — retries up to ``executor.max_retries``, the straggler
policy ``on_timeout`` (``"drop"``: FedAvg's renormalisation over the jobs that returned;
``"retry"``), never a call left without any job — and counted in :meth:`RayExecutor.faults`
(incidents in :attr:`RayExecutor.fault_events`); with ``keep_local=True`` (per-client results
needed) stragglers are always retried.

Non-finite clients (NaN/±inf results) are found on the workers, by the in-process executor's own
check, left out of each shard's sums and their job positions sent back
(``ShardResult.nonfinite``); the coordinator applies the run's ``on_nonfinite`` to the whole round: ``"error"`` raises one
:class:`~fedopt.engine.nonfinite.NonFiniteError` naming them, ``"drop"`` renormalises over the
clients that returned finite results, with the same :func:`~fedopt.engine.executor.drop_scale`
as for stragglers (``RoundOutput.nonfinite`` lists them).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from fedopt.protocols.ray_messages import Params, ShardResult, share, to_arrays, to_tensors
from fedopt.client.ray_worker import WorkerSpec
from fedopt.client.shard import data_fingerprint
from fedopt.data import FederatedDataset
from fedopt.engine.contract import (ClientUpdate, DelayFn, RoundOutput, SharedStart, Starts)
from fedopt.engine.executor import job_samples
from fedopt.engine.local import LocalTrainer
from fedopt.engine.program import check_shippable
from fedopt.engine.nonfinite import POLICIES, check_policy, client_error
from fedopt.server.dispatch import Call, CallFailed, DispatchPolicy, gather, renormalise
from fedopt.server.ray_async import AsyncDispatcher, RayJob
from fedopt.server.ray_coded import CodedDispatcher
from fedopt.server.ray_connect import RaySession, connect_ray
from fedopt.server.ray_runtime import runtime_env
from fedopt.server.faults import FaultLog, failure_cause
from fedopt.server.ray_pool import WorkerPool, death_errors, gpu_plan

log = logging.getLogger("server.ray")


@dataclass
class RoundReport:
    """What happened in the last ``run_jobs`` call: timing and incidents."""

    key: int
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
    """Runs local jobs on a pool of Ray worker actors (see the module docstring); implements
    :class:`~fedopt.engine.contract.LiveExecutor`."""

    name = "ray"

    def __init__(self, pool: WorkerPool, session: RaySession, trainer: LocalTrainer, *,
                 batch_size: int, local_steps: int | None, local_epochs: int | None,
                 round_timeout_s: float | None = None, max_retries: int = 2,
                 on_timeout: str = "drop", chunk_size: int | None = None,
                 delay_s: DelayFn | None = None, on_nonfinite: str = "error",
                 dataset: FederatedDataset | None = None):
        import ray

        #: timeouts, retries and drops of every call (:mod:`fedopt.server.dispatch`)
        self.policy = DispatchPolicy(max_retries=int(max_retries),
                                     round_timeout_s=round_timeout_s, on_timeout=on_timeout)
        if on_nonfinite not in POLICIES:
            raise ValueError(f"on_nonfinite: one of {POLICIES}, got {on_nonfinite!r}")
        #: the run's policy for clients with non-finite results (applied here, per call)
        self.on_nonfinite = on_nonfinite
        self.ray = ray
        self.pool = pool
        self.session = session
        #: the coordinator's trainer; workers run the same class with its local program
        self.trainer = trainer
        #: the coordinator's data set (evaluation, client sizes); never shipped to workers
        self.data = dataset
        self.batch_size, self.local_steps, self.local_epochs = batch_size, local_steps, local_epochs
        self.chunk_size = chunk_size
        #: optional injected compute time ``delay_s(client_id, key) -> seconds``: a job's
        #: answer is held until that long after it started (a shard waits for its slowest client)
        self.delay_s: DelayFn | None = delay_s
        self.faults_log = pool.faults
        self.last_report: RoundReport | None = None
        self._async = AsyncDispatcher(ray, pool, self.policy, lambda: self.delay_s)
        self._coded = CodedDispatcher(ray, pool)
        self._closed = False

    # the policy's settings, readable and settable one by one (a new, validated policy)
    def _set_policy(self, **change: Any) -> None:
        self.policy = dataclasses.replace(self.policy, **change)
        self._async.policy = self.policy

    max_retries = property(lambda self: self.policy.max_retries,
                           lambda self, v: self._set_policy(max_retries=int(v)))
    round_timeout_s = property(lambda self: self.policy.round_timeout_s,
                               lambda self, v: self._set_policy(round_timeout_s=v))
    on_timeout = property(lambda self: self.policy.on_timeout,
                          lambda self, v: self._set_policy(on_timeout=v))

    @property
    def optimizer(self) -> Any:
        """The client optimizer of jobs run without one (the trainer's)."""
        return self.trainer.optimizer

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
        session = connect_ray(ex["address"], log_to_driver=options.pop("log_to_driver", True),
                              runtime_env=runtime_env(ex))
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
            # decentralized node actors (fedopt.server.ray_nodes) replace the client workers
            from fedopt.algorithms.decentralized import ON_ACTORS

            workers = 0 if config["algorithm"]["name"] in ON_ACTORS else ex["num_workers"]
            pool = WorkerPool(spec, num_clients=dataset.num_clients, num_workers=workers,
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
                   max_retries=ex["max_retries"], chunk_size=ex["chunk_size"], dataset=dataset,
                   **{"on_timeout": ex["on_timeout"],
                      "on_nonfinite": check_policy(config.get("on_nonfinite", "error")),
                      **options})

    # -- reporting --------------------------------------------------------------------------------
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

    # -- scatter / gather (failures and timeouts: server.dispatch) ------------------------------
    def _delay(self, ids: np.ndarray, keys: np.ndarray) -> float:
        if self.delay_s is None:
            return 0.0
        return max((float(self.delay_s(int(c), int(k))) for c, k in zip(ids, keys)),
                   default=0.0)

    def _gather(self, ids: np.ndarray, call: Callable[[Any, np.ndarray], Any], key: int | None,
                report: RoundReport, need_all: bool) -> list[tuple[Call, Any]]:
        """Run ``call(actor, positions)`` for each worker's share of ``ids``, through
        :func:`fedopt.server.dispatch.gather`; (call, result) pairs, each job in exactly one."""
        got = gather(_RayTransport(self, ids, call, key), ids, self.policy, self.faults_log,
                     key, need_all)
        report.retried += got.retried
        report.dropped.extend(got.dropped)
        return got.results

    # -- local jobs -------------------------------------------------------------------------------
    def run_jobs(self, starts: Starts, client_ids: np.ndarray, keys: np.ndarray,
                 weights: np.ndarray, optimizer=None, correction: Params | None = None,
                 keep_local: bool = False) -> RoundOutput:
        """Job j trains client ``client_ids[j]`` from ``starts[j]`` (stacked [m, ...]) or the
        :class:`~fedopt.engine.contract.SharedStart` with minibatches keyed by ``keys[j]``, on
        the workers; Σ_j w_j Δ_j (:class:`~fedopt.engine.contract.Executor`). The starts go
        into the object store once, or inside the tasks when small
        (:func:`~fedopt.protocols.ray_messages.share`); each worker takes its rows."""
        if self._closed:
            raise RuntimeError("RayExecutor.run_jobs: the executor is closed")
        start = time.perf_counter()
        ids = np.asarray(client_ids, dtype=np.int64)
        keys = np.asarray(keys, dtype=np.int64)
        if keys.shape != ids.shape:
            raise ValueError(f"keys: one per job expected, got {keys.shape} for "
                             f"{ids.shape} jobs")
        w = np.asarray(weights, dtype=np.float64)
        shared = isinstance(starts, SharedStart)
        params = starts.params if shared else starts
        # the call's round for fault messages (None: jobs of several keys)
        key = int(keys[0]) if len(keys) and bool((keys == keys[0]).all()) else None
        report = RoundReport(-1 if key is None else key)
        starts_ref = share(self.ray, to_arrays(params))      # once per call, shared by all
        corr = to_arrays(correction)

        def call(actor: Any, pos: np.ndarray) -> Any:
            c = None if corr is None else {k: v[pos] for k, v in corr.items()}
            return actor.run_jobs.remote(starts_ref, None if shared else pos, ids[pos],
                                         keys[pos], w[pos], optimizer, keep_local, c,
                                         self._delay(ids[pos], keys[pos]))

        results = self._gather(ids, call, key, report, need_all=keep_local)
        ref_t = next(iter(params.values()))
        out = self._combine(results, ids, keys, w, ref_t, keep_local, report)
        report.wall_s = time.perf_counter() - start
        self.last_report = report
        return out

    def run_round(self, params: Params, client_ids: np.ndarray, weights: np.ndarray,
                  key: int, optimizer=None, keep_local: bool = False,
                  correction: Params | None = None) -> RoundOutput:
        """One synchronous round: :meth:`run_jobs` from the shared ``params``, keyed by ``key``."""
        ids = np.asarray(client_ids, dtype=np.int64)
        return self.run_jobs(SharedStart(params), ids, np.full(len(ids), int(key)), weights,
                             optimizer=optimizer, correction=correction, keep_local=keep_local)

    def full_gradients(self, params: Params, client_ids: np.ndarray) -> Params:
        """Stacked ∇F_i(x) over each client's full local data, computed on the workers
        (SCAFFOLD option I, gradient coding)."""
        ids = np.asarray(client_ids, dtype=np.int64)
        params_ref = share(self.ray, to_arrays(params))
        results = self._gather(
            ids, lambda actor, pos: actor.full_gradients.remote(params_ref, ids[pos]),
            None, RoundReport(-1), need_all=True)
        ref_t = next(iter(params.values()))
        out: Params = {k: v.new_empty((len(ids),) + tuple(v.shape)) for k, v in params.items()}
        for task, arrays in results:
            g = to_tensors(arrays, ref_t.device, ref_t.dtype)
            pos = torch.as_tensor(task.positions, device=ref_t.device)
            for k in out:
                out[k][pos] = g[k]
        return out

    # -- evaluation, sizes ------------------------------------------------------------------------
    def _coordinator_data(self, what: str) -> FederatedDataset:
        if self.data is None:
            raise RuntimeError(f"RayExecutor.{what}: built without the coordinator's data set "
                               f"(pass dataset=..., as from_config does)")
        return self.data

    def evaluate(self, params: Params, train: bool = False) -> dict[str, float | None]:
        """The global model's test (and train) loss and metrics, on the coordinator (it holds
        the test rows): the in-process evaluation, same code and bits."""
        from fedopt.engine.evaluate import evaluation_row

        data = self._coordinator_data("evaluate")
        return evaluation_row(self.trainer.fmodel, self.trainer.program, data, params, train)

    def job_samples(self, client_ids: np.ndarray) -> np.ndarray:
        """int64 [m]: real samples one local job of each of ``client_ids`` processes."""
        counts = self._coordinator_data("job_samples").counts.cpu().numpy()
        return job_samples(counts[np.asarray(client_ids, dtype=np.int64)], self.batch_size,
                           self.local_steps, self.local_epochs)

    def _combine(self, results: list[tuple[Call, ShardResult]], ids: np.ndarray,
                 keys: np.ndarray, w: np.ndarray, ref_t: torch.Tensor, keep_local: bool,
                 report: RoundReport) -> RoundOutput:
        """Σ of the shards' partial sums (in job order), renormalised over the jobs that
        returned finite results (:func:`fedopt.server.dispatch.renormalise`: stragglers dropped, or
        non-finite clients under ``on_nonfinite="drop"``); raises
        :class:`~fedopt.engine.nonfinite.NonFiniteError` for non-finite clients under
        ``"error"``."""
        dev, dt = ref_t.device, ref_t.dtype
        delta_sum: Params | None = None
        local: Params | None = None
        loss_sum, samples, updates, w_returned = 0.0, 0, 0, 0.0
        steps = np.zeros(len(ids), dtype=np.int64)
        batch_size = None                    # online local programs' largest batches
        local_loss = np.zeros(len(ids)) if keep_local else None
        nonfinite: list[np.ndarray] = []     # positions in the call of non-finite jobs
        for task, res in results:
            d = to_tensors(res.delta_sum, dev, dt)
            delta_sum = d if delta_sum is None else {k: delta_sum[k] + d[k] for k in d}
            loss_sum += res.loss_sum
            samples += res.samples
            updates += res.updates
            w_returned += float(np.sum(w[task.positions]))
            bad = np.asarray(task.positions)[np.asarray(res.nonfinite, dtype=np.int64)]
            if len(bad):                    # the shard's positions -> the call's
                nonfinite.append(bad)
                w_returned -= float(np.sum(w[bad]))
            steps[task.positions] = res.steps
            if getattr(res, "batch_size", None) is not None:
                if batch_size is None:
                    batch_size = np.zeros(len(ids), dtype=np.int64)
                batch_size[task.positions] = res.batch_size
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
        bad_pos = np.sort(np.concatenate(nonfinite)) if nonfinite else np.zeros(0, np.int64)
        if len(bad_pos) and self.on_nonfinite == "error":
            raise client_error(ids[bad_pos], keys[bad_pos])
        if delta_sum is not None and (report.dropped or len(bad_pos)):
            delta_sum, loss_sum = renormalise(delta_sum, loss_sum, weight_sum, w_returned)
        return RoundOutput(delta_sum=delta_sum, weight_sum=weight_sum, loss_sum=loss_sum,
                           samples=samples, updates=updates, local_params=local, steps=steps,
                           local_loss=local_loss, nonfinite=bad_pos, batch_size=batch_size)

    # -- asynchronous, real time ------------------------------------------------------------------
    def submit(self, params: Params, client_ids, key: int, *, optimizer=None,
               correction: Params | None = None, delay_s: DelayFn | None = None,
               group: bool = False) -> list[RayJob]:
        """Start jobs now, keyed by ``key``; collect them with :meth:`wait` (see
        :mod:`fedopt.server.ray_async`)."""
        return self._async.submit(params, client_ids, key, optimizer=optimizer,
                                  correction=correction, delay_s=delay_s, group=group)

    def wait(self, jobs: list[RayJob], num_returns: int = 1, timeout: float | None = None
             ) -> tuple[list[ClientUpdate], list[RayJob]]:
        """The first ``num_returns`` jobs to finish (``ray.wait``) as client updates, and the rest."""
        return self._async.wait(jobs, num_returns, timeout)

    def cancel(self, jobs: list[RayJob]) -> None:
        self._async.cancel(jobs)

    # -- coded gradient tasks (gradient coding: fedopt.server.ray_coded) -------------------------
    def submit_coded(self, params_list, tasks, key: int, *, job_keys=None, delays=None):
        """One call per worker actor computing its coded workers' tasks (see
        :class:`~fedopt.engine.contract.CodedExecutor`)."""
        if self._closed:
            raise RuntimeError("RayExecutor.submit_coded: the executor is closed")
        return self._coded.submit(list(params_list), list(tasks), key, job_keys, delays)

    def wait_coded(self, call, timeout: float | None = None):
        return self._coded.wait(call, timeout)

    def cancel_coded(self, call) -> None:
        self._coded.cancel(call)

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


class _RayTransport:
    """:class:`fedopt.server.dispatch.Transport` over the worker pool: a share is one actor call."""

    def __init__(self, ex: RayExecutor, ids: np.ndarray, call: Callable[[Any, np.ndarray], Any],
                 key: int):
        self.ex, self.ids, self.call, self.key = ex, ids, call, key

    def send(self, positions: np.ndarray, exclude: set[int]) -> list[tuple[np.ndarray, int, Any]]:
        pool = self.ex.pool
        slots = pool.assign(self.ids[positions], exclude)
        sent = []
        for s in np.unique(slots):
            pos = positions[slots == s]
            actor = pool.actor(int(s))
            sent.append((pos, int(s), (actor, self.call(actor, pos))))
        return sent

    def ready(self, calls: list[Call], timeout: float | None) -> list[Call]:
        ray = self.ex.ray
        by_ref = {c.handle[1]: c for c in calls}
        refs = list(by_ref)
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        return [by_ref[r] for r in ready]

    def result(self, call: Call) -> Any:
        try:
            return self.ex.ray.get(call.handle[1])
        except death_errors() as e:
            raise CallFailed(failure_cause(e)) from e

    def replace(self, call: Call, reason: str) -> None:
        self.ex.pool.restart_if_current(call.slot, call.handle[0], reason, self.key)
