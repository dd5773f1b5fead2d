"""The gRPC executor: client processes on other hosts behind the one executor contract.

``executor: {name: grpc, address, min_clients, tokens, tls, ...}`` (:mod:`fedopt.server.
grpc_config`). :meth:`GrpcExecutor.from_config` starts the coordinator service
(:mod:`fedopt.server.grpc_service`) on ``address`` (TLS when ``tls`` is given) and waits until
``min_clients`` client processes (``fedopt client``) have registered. Each client process holds
some clients' data (built from the config and seed as a Ray worker does, or its own npz file)
and trains them with the same local program and vectorized engine
(:class:`~fedopt.client.ray_worker.ShardWorker`).

A call (:meth:`run_jobs`, :meth:`full_gradients`) becomes one task per client process holding
some of its jobs; :func:`fedopt.server.dispatch.gather` sends and collects them under the
run's :class:`~fedopt.server.dispatch.DispatchPolicy` — the same timeouts, retries, drops and
renormalisation as the Ray executor. A client process that dies or falls silent does not
answer: after ``round_timeout_s`` its jobs are stragglers (dropped and renormalised, or re-sent
with ``on_timeout: retry``); one that reconnects gets its unanswered tasks again. A client
that reports an error fails its task (re-sent up to ``max_retries``, then
:class:`~fedopt.server.faults.WorkerFailedError`).

**Streaming aggregation.** Each accepted answer is folded into the running sums
Σ_j w_j Δ_j, Σ_j w_j L_j as it is read, and its buffer released: the coordinator holds the sum
plus at most ``max_buffered_results`` undigested answers, never every client's update (per-job
results are kept only where the algorithm asks for them, ``keep_local``). The sum's order is
the order of arrival, so results equal the in-process executor's up to float summation order.

**Real time** (:class:`~fedopt.engine.contract.LiveExecutor`): :meth:`GrpcExecutor.submit`
starts one job per client (or per client process), :meth:`wait` collects answers in arrival
order, :meth:`cancel` refuses the answers of jobs no longer wanted — what the
transport-independent driver :mod:`fedopt.server.realtime` needs to run the asynchronous family
in real time (``executor.realtime: true``, with the clock's job times injected as delays held
on the clients when ``executor.seconds_per_unit`` is set).

Evaluation and client sizes use the coordinator's own copy of the data set (from the config).
"""
from __future__ import annotations

import logging
import time
from concurrent import futures
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from fedopt.data import FederatedDataset
from fedopt.engine.contract import (ClientUpdate, DelayFn, Params, RoundOutput, SharedStart,
                                   Starts)
from fedopt.engine.executor import job_samples
from fedopt.engine.local import LocalTrainer
from fedopt.engine.nonfinite import POLICIES, check_policy, client_error
from fedopt.protocols import grpc_messages as M
from fedopt.protocols.grpc_codec import Limits, fragment, param_spec
from fedopt.protocols.grpc_wire import CHUNK_BYTES, channel_options, server_credentials
from fedopt.protocols.ray_messages import to_arrays, to_tensors
from fedopt.server.dispatch import (Action, Call, CallFailed, DispatchPolicy, gather,
                                    renormalise)
from fedopt.server.faults import FaultLog, WorkerFailedError
from fedopt.server.grpc_config import check_files
from fedopt.server.grpc_service import (SILENT_HEARTBEATS, Coordinator, CoordinatorError,
                                        ServerTask)

log = logging.getLogger("server.grpc")


def handler_threads(processes: int) -> int:
    """Handler threads for ``processes`` client processes: each may hold a Poll (up to
    ``MAX_POLL_S``), a Submit and a Heartbeat at once, plus a margin; at least 32."""
    return max(32, 3 * int(processes) + 8)


def start_server(coordinator: Coordinator, address: str, tls: dict | None, chunk_bytes: int,
                 max_workers: int | None = None) -> tuple[Any, int]:
    """A started ``grpc.server`` serving ``coordinator`` on ``address`` (port 0: any free
    port); returns it and the bound port. ``max_workers`` (handler threads; default
    :func:`handler_threads`) must exceed the calls held open at once, or the others queue."""
    from fedopt.extras import require

    grpc = require("grpc", "executor.name: grpc")   # the [grpc] extra: one error naming it

    # no bandwidth-delay probing: stream windows stay small, so clients waiting to submit
    # (the coordinator reads at most max_buffered_results answers at once) cannot park their
    # updates in the server's receive buffers
    workers = handler_threads(len(coordinator.slots)) if max_workers is None else max_workers
    # chunk_bytes sizes the coordinator's own frames; clients send in CHUNK_BYTES frames
    accept = max(int(chunk_bytes), CHUNK_BYTES)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                         options=channel_options(accept) + [("grpc.http2.bdp_probe", 0)])
    server.add_generic_rpc_handlers((coordinator.handler(),))
    if tls:
        port = server.add_secure_port(address, server_credentials(tls["cert"], tls["key"],
                                                                  tls.get("ca")))
    else:
        port = server.add_insecure_port(address)
    if not port:
        raise CoordinatorError(f"executor.address: cannot listen on {address!r}")
    server.start()
    return server, port


@dataclass
class _Sum:
    """The running sums of one call (streaming aggregation)."""

    delta: Params | None = None
    loss: float = 0.0
    samples: int = 0
    updates: int = 0
    kept_weight: float = 0.0
    steps: np.ndarray | None = None
    batch_size: np.ndarray | None = None     # online local programs' largest batches
    local: Params | None = None
    local_loss: np.ndarray | None = None
    nonfinite: list = field(default_factory=list)


@dataclass(eq=False)
class GrpcJob:
    """One job of :meth:`GrpcExecutor.submit` in flight: its clients, the key (start version)
    they train from, the coordinator's task and how to build it again (a retry)."""

    client_ids: np.ndarray
    key: int
    params: Params
    task: ServerTask
    build: Callable[[int], list]
    submitted_at: float
    attempts: int = 0


def _rows(stacked: Params, pos: np.ndarray) -> dict[str, np.ndarray]:
    """Rows ``pos`` of stacked ``[m, ...]`` tensors as host arrays (one share's jobs)."""
    idx = torch.as_tensor(pos, dtype=torch.long)
    return to_arrays({k: v[idx.to(v.device)] for k, v in stacked.items()})


class GrpcExecutor:
    """Runs local jobs on connected client processes (module docstring); implements
    :class:`~fedopt.engine.contract.LiveExecutor`."""

    name = "grpc"

    def __init__(self, coordinator: Coordinator, server: Any, trainer: LocalTrainer,
                 dataset: FederatedDataset, *, batch_size: int, local_steps: int | None,
                 local_epochs: int | None, policy: DispatchPolicy, join_timeout_s: float,
                 on_nonfinite: str = "error", shutdown_grace_s: float = 10.0):
        if on_nonfinite not in POLICIES:
            raise ValueError(f"on_nonfinite: one of {POLICIES}, got {on_nonfinite!r}")
        self.coordinator, self.server = coordinator, server
        self.trainer, self.data = trainer, dataset
        self.batch_size, self.local_steps, self.local_epochs = batch_size, local_steps, local_epochs
        self.policy = policy
        self.join_timeout_s = float(join_timeout_s)
        self.on_nonfinite = on_nonfinite
        self.shutdown_grace_s = float(shutdown_grace_s)
        self.faults_log = FaultLog(self.name)
        self._closed = False

    @property
    def optimizer(self) -> Any:
        return self.trainer.optimizer

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: dict[str, Any], dataset: FederatedDataset, trainer: LocalTrainer,
                    port_file: str | None = None) -> "GrpcExecutor":
        """Start the coordinator on ``executor.address`` and wait (``executor.join_timeout_s``)
        for ``executor.min_clients`` client processes. ``port_file``: write the bound port
        there (tests bind port 0)."""
        ex = config["executor"]
        tokens = check_files(ex)
        M.optimizer_spec(trainer.optimizer)       # refuses an optimizer that cannot travel
        limits = Limits(max_message_bytes=int(ex["max_message_mb"] * (1 << 20)))
        coordinator = Coordinator(tokens, config=config,
                                  counts=dataset.counts.cpu().numpy().astype(np.int64),
                                  num_classes=int(dataset.num_classes or 0),
                                  program=M.describe(trainer.program),
                                  heartbeat_s=ex["heartbeat_s"], chunk_bytes=ex["chunk_bytes"],
                                  limits=limits, max_buffered=ex["max_buffered_results"],
                                  upload_grace_s=ex["upload_grace_s"],
                                  min_upload_rate=ex["min_upload_kib_s"] * 1024.0)
        host = ex["address"].rpartition(":")[0].strip("[]")
        if not ex["tls"] and host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("executor.tls is not set and executor.address %s is not loopback: tokens "
                        "and models travel unencrypted (set executor.tls for other hosts)",
                        ex["address"])
        server, port = start_server(coordinator, ex["address"], ex["tls"], ex["chunk_bytes"])
        if port_file:
            with open(port_file, "w") as f:
                f.write(str(port))
        log.info("grpc coordinator listening on %s (port %d, %s); waiting for %d client "
                    "process(es)", ex["address"], port, "TLS" if ex["tls"] else "plaintext",
                    ex["min_clients"])
        client = config["client"]
        policy = DispatchPolicy(max_retries=ex["max_retries"],
                                round_timeout_s=ex["round_timeout_s"], on_timeout=ex["on_timeout"])
        self = cls(coordinator, server, trainer, dataset, batch_size=client["batch_size"],
                   local_steps=client["local_steps"], local_epochs=client["local_epochs"],
                   policy=policy, join_timeout_s=ex["join_timeout_s"],
                   on_nonfinite=check_policy(config.get("on_nonfinite", "error")),
                   shutdown_grace_s=ex["shutdown_grace_s"])
        self.port = port
        try:
            self.wait_clients(ex["min_clients"], ex["join_timeout_s"])
        except BaseException:
            self.close()
            raise
        return self

    def wait_clients(self, k: int, timeout: float | None) -> None:
        """Block until ``k`` client processes are registered; CoordinatorError after
        ``timeout`` seconds."""
        c = self.coordinator
        if not c.wait_for(lambda: sum(s.session is not None for s in c.slots) >= k, timeout):
            have = sum(s.session is not None for s in c.slots)
            raise CoordinatorError(f"executor.min_clients: {have} of {k} client processes "
                                   f"connected within executor.join_timeout_s={timeout:g} s")

    # -- reporting -------------------------------------------------------------------------
    def faults(self) -> dict[str, int]:
        """Cumulative fault counters (:class:`~fedopt.server.faults.FaultLog`) plus the
        results refused as stale or duplicate."""
        return {**self.faults_log.summary(),
                "refused_results": sum(self.coordinator.refused.values())}

    @property
    def workers(self) -> list[dict[str, Any]]:
        live = set(self.coordinator.connected())
        return [{"slot": s.index, "name": s.name, "clients": int(s.clients.size),
                 "connected": s.index in live, "registrations": s.registrations}
                for s in self.coordinator.slots]

    # -- jobs ------------------------------------------------------------------------------
    def run_jobs(self, starts: Starts, client_ids: np.ndarray, keys: np.ndarray,
                 weights: np.ndarray, optimizer: Any = None, correction: Params | None = None,
                 keep_local: bool = False) -> RoundOutput:
        """:meth:`Executor.run_jobs <fedopt.engine.contract.Executor.run_jobs>` on the client
        processes holding ``client_ids`` (module docstring)."""
        if self._closed:
            raise RuntimeError("GrpcExecutor.run_jobs: the executor is closed")
        ids = np.asarray(client_ids, dtype=np.int64)
        keys = np.asarray(keys, dtype=np.int64)
        w = np.asarray(weights, dtype=np.float64)
        if keys.shape != ids.shape or w.shape != ids.shape:
            raise ValueError(f"keys/weights: one per job expected for {ids.shape} jobs")
        shared = isinstance(starts, SharedStart)
        params = starts.params if shared else starts
        ref = next(iter(params.values()))
        spec = param_spec(params if shared else {k: v[0] for k, v in params.items()})
        opt = M.optimizer_spec(optimizer)
        shared_bytes = fragment(params) if shared else None   # packed once for every client
        acc = _Sum(steps=np.zeros(len(ids), np.int64),
                   local_loss=np.zeros(len(ids)) if keep_local else None)

        def parts_of(pos: np.ndarray):
            def build(tid: int) -> list[bytes]:
                task = M.Task(task_id=tid, epoch=self.coordinator.epoch, kind="run",
                              starts={} if shared else _rows(params, pos),
                              shared=shared, client_ids=ids[pos], keys=keys[pos],
                              weights=w[pos], optimizer=opt,
                              correction=None if correction is None else _rows(correction, pos),
                              keep_local=keep_local)
                return M.pack_parts(task, {"starts": shared_bytes} if shared else None)
            return build

        def fold(call: Call, r: M.Result) -> None:
            pos = call.positions
            d = to_tensors(r.delta_sum, ref.device, ref.dtype)
            acc.delta = ({k: v.clone() for k, v in d.items()} if acc.delta is None   # own memory
                         else {k: acc.delta[k].add_(d[k]) for k in d})
            acc.loss += r.loss_sum
            acc.samples += r.samples
            acc.updates += r.updates
            acc.kept_weight += float(np.sum(w[pos]))
            bad = pos[r.nonfinite] if r.nonfinite is not None and r.nonfinite.size else pos[:0]
            if bad.size:
                acc.nonfinite.append(bad)
                acc.kept_weight -= float(np.sum(w[bad]))
            acc.steps[pos] = r.steps
            if r.batch_size is not None:
                if acc.batch_size is None:
                    acc.batch_size = np.zeros(len(ids), np.int64)
                acc.batch_size[pos] = r.batch_size
            if keep_local:
                acc.local_loss[pos] = r.local_loss
                y = to_tensors(r.local_params, ref.device, ref.dtype)
                if acc.local is None:
                    acc.local = {k: v.new_empty((len(ids),) + tuple(v.shape[1:]))
                                 for k, v in y.items()}
                p = torch.as_tensor(pos, device=ref.device)
                for k, v in y.items():
                    acc.local[k][p] = v

        key = int(keys[0]) if len(keys) and bool((keys == keys[0]).all()) else None
        got = self._gather(ids, "run", parts_of, spec, w, keep_local, fold, key,
                           need_all=keep_local)
        weight_sum = float(np.sum(w))
        bad = np.sort(np.concatenate(acc.nonfinite)) if acc.nonfinite else np.zeros(0, np.int64)
        if bad.size and self.on_nonfinite == "error":
            raise client_error(ids[bad], keys[bad])
        delta, loss = acc.delta, acc.loss
        if delta is None:   # every job dropped: no change
            delta = {k: torch.zeros_like(v[0] if not shared else v) for k, v in params.items()}
        elif got.dropped or bad.size:
            delta, loss = renormalise(delta, loss, weight_sum, acc.kept_weight)
        return RoundOutput(delta_sum=delta, weight_sum=weight_sum, loss_sum=loss,
                           samples=acc.samples, updates=acc.updates, local_params=acc.local,
                           steps=acc.steps, local_loss=acc.local_loss, nonfinite=bad,
                           batch_size=acc.batch_size)

    def full_gradients(self, params: Params, client_ids: np.ndarray) -> Params:
        """Stacked ∇F_i(x) ``[m, *shape]`` computed by the client processes."""
        ids = np.asarray(client_ids, dtype=np.int64)
        shared_bytes = fragment(params)
        ref = next(iter(params.values()))
        out: Params = {k: v.new_empty((len(ids),) + tuple(v.shape)) for k, v in params.items()}

        def parts_of(pos: np.ndarray):
            def build(tid: int) -> list[bytes]:
                task = M.Task(task_id=tid, epoch=self.coordinator.epoch, kind="grad", starts={},
                              shared=True, client_ids=ids[pos],
                              keys=np.zeros(len(pos), np.int64), weights=np.ones(len(pos)))
                return M.pack_parts(task, {"starts": shared_bytes})
            return build

        def fold(call: Call, r: M.Result) -> None:
            g = to_tensors(r.grads, ref.device, ref.dtype)
            p = torch.as_tensor(call.positions, device=ref.device)
            for k in out:
                out[k][p] = g[k]

        self._gather(ids, "grad", parts_of, param_spec(params), np.ones(len(ids)), False, fold,
                     None, need_all=True)
        return out

    def _gather(self, ids, kind, parts_of, spec, w, keep_local, fold, key, need_all):
        transport = _GrpcTransport(self, ids, kind, parts_of, spec, w, keep_local, fold, key)
        try:
            return gather(transport, ids, self.policy, self.faults_log, key, need_all)
        finally:
            transport.cancel_all()   # anything still out (an error was raised) is refused later

    # -- asynchronous, real time (LiveExecutor) --------------------------------------------
    def submit(self, params: Params, client_ids, key: int, *, optimizer: Any = None,
               correction: Params | None = None, delay_s: DelayFn | None = None,
               group: bool = False) -> list[GrpcJob]:
        """Start one job per client (``group``: one per client process) from ``params`` with
        minibatches keyed by ``key``; the model is packed once for all of them. A job's answer
        is held on its client until ``delay_s(client, key)`` seconds after it started."""
        if self._closed:
            raise RuntimeError("GrpcExecutor.submit: the executor is closed")
        c = self.coordinator
        ids = np.asarray(client_ids, dtype=np.int64)
        if not c.wait_for(lambda: bool((c.owner[ids] >= 0).all()), self.join_timeout_s):
            missing = ids[c.owners(ids) < 0][:10].tolist()
            raise CoordinatorError(f"no client process holds clients {missing} (none registered "
                                   f"them within executor.join_timeout_s="
                                   f"{self.join_timeout_s:g} s)")
        owners = c.owners(ids)
        frag, spec, opt = fragment(params), param_spec(params), M.optimizer_spec(optimizer)
        groups = ([np.flatnonzero(owners == s) for s in np.unique(owners)] if group
                  else [np.array([p]) for p in range(len(ids))])
        jobs, now = [], time.monotonic()
        for pos in groups:
            delay = max((float(delay_s(int(i), int(key))) for i in ids[pos]),
                        default=0.0) if delay_s else 0.0

            def build(tid: int, pos=pos, delay=delay) -> list:
                task = M.Task(task_id=tid, epoch=c.epoch, kind="run", starts={}, shared=True,
                              client_ids=ids[pos], keys=np.full(len(pos), int(key), np.int64),
                              weights=np.ones(len(pos)), optimizer=opt,
                              correction=None if correction is None else _rows(correction, pos),
                              keep_local=True, delay_s=delay)
                return M.pack_parts(task, {"starts": frag})

            slot = int(owners[pos[0]])
            task = c.add_task(slot, "run", ids[pos], build, spec, float(len(pos)), True)
            jobs.append(GrpcJob(ids[pos], int(key), params, task, build, now))
        return jobs

    def wait(self, jobs: list[GrpcJob], num_returns: int = 1, timeout: float | None = None
             ) -> tuple[list[ClientUpdate], list[GrpcJob]]:
        """Block until ``num_returns`` of ``jobs`` answered (or ``timeout`` s passed); their
        client updates in arrival order, and the jobs still pending. A job its client reports
        failed is sent again (``executor.max_retries``), then WorkerFailedError."""
        c = self.coordinator
        pending, finished = list(jobs), []
        deadline = None if timeout is None else time.monotonic() + timeout
        want = min(num_returns, len(pending))
        while pending and len(finished) < want:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done = {id(t) for t in c.wait_done([j.task for j in pending], left)}
            if not done:
                break
            for job in [j for j in pending if id(j.task) in done]:
                t = job.task
                if t.state == "failed":
                    c.forget(t)
                    self.faults_log.record("worker_deaths", round_idx=job.key, slot=t.slot,
                                           clients=job.client_ids, detail=f"async job: {t.error}")
                    if self.policy.on_failure(job.attempts).action is Action.FAIL:
                        raise WorkerFailedError(clients=job.client_ids, round_idx=job.key,
                                                slot=t.slot, attempts=job.attempts + 1,
                                                max_retries=self.policy.max_retries,
                                                cause=t.error or "failed",
                                                executor=self.name)
                    job.attempts += 1
                    self.faults_log.record("retried_shards", round_idx=job.key, slot=t.slot,
                                           clients=job.client_ids, detail="async job re-sent")
                    job.task = c.add_task(t.slot, "run", job.client_ids, job.build, t.spec,
                                          t.weight_sum, True)
                    continue
                arrived = t.arrived
                finished.append((job, c.take(t), arrived))
                pending.remove(job)
        finished.sort(key=lambda x: x[2])
        return [u for job, r, at in finished for u in self._updates(job, r, at)], pending

    def _updates(self, job: GrpcJob, r: M.Result, arrived: float) -> list[ClientUpdate]:
        ref = next(iter(job.params.values()))
        local = to_tensors(r.local_params, ref.device, ref.dtype)
        bad = np.zeros(len(job.client_ids), dtype=bool)
        if r.nonfinite is not None:
            bad[r.nonfinite] = True
        mean_loss = r.loss_sum / max(float(np.sum(~bad)), 1e-300)   # weights 1
        elapsed = time.monotonic() - job.submitted_at
        return [ClientUpdate(client_id=int(cid), key=job.key,
                             delta={k: local[k][i] - job.params[k] for k in job.params},
                             mean_loss=math.nan if bad[i] else mean_loss, samples=r.samples,
                             slot=job.task.slot, elapsed_s=elapsed, compute_s=r.compute_s,
                             finished_at=arrived, nonfinite=bool(bad[i]))
                for i, cid in enumerate(job.client_ids)]

    def cancel(self, jobs: list[GrpcJob]) -> None:
        """Forget ``jobs``: not handed out any more; answers that still come are refused."""
        for job in jobs:
            self.coordinator.cancel(job.task)
            self.coordinator.forget(job.task)

    # -- evaluation, sizes (the coordinator's data set) ------------------------------------
    def evaluate(self, params: Params, train: bool = False) -> dict[str, float | None]:
        from fedopt.engine.evaluate import evaluation_row

        return evaluation_row(self.trainer.fmodel, self.trainer.program, self.data, params, train)

    def job_samples(self, client_ids: np.ndarray) -> np.ndarray:
        counts = self.data.counts.cpu().numpy()
        return job_samples(counts[np.asarray(client_ids, dtype=np.int64)], self.batch_size,
                           self.local_steps, self.local_epochs)

    # -- shutdown --------------------------------------------------------------------------
    def close(self) -> None:
        """Tell every client process to exit (they hear it on their next poll, within
        ``shutdown_grace_s``), then stop the server. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        c = self.coordinator
        c.shutdown("the run is over")
        deadline = time.monotonic() + self.shutdown_grace_s
        # wait (bounded) until every connected client heard it (one still finishing a
        # cancelled job hears it on its next poll)
        while time.monotonic() < deadline:
            if all(c.slots[i].told_shutdown for i in c.connected()):
                break
            time.sleep(0.05)
        self.server.stop(grace=1.0).wait(5.0)

    def __enter__(self) -> "GrpcExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _GrpcTransport:
    """:class:`fedopt.server.dispatch.Transport` over the coordinator: a share is one task to
    the client process holding its clients (only it holds their data: ``exclude`` cannot move
    a share elsewhere; a re-send waits for that process to come back)."""

    def __init__(self, ex: GrpcExecutor, ids, kind, parts_of, spec, w, keep_local, fold, key):
        self.ex, self.ids, self.kind, self.parts_of = ex, ids, kind, parts_of
        self.spec, self.w, self.keep_local, self.fold, self.key = spec, w, keep_local, fold, key
        self.out: list[ServerTask] = []

    def send(self, positions: np.ndarray, exclude: set[int]) -> list[tuple[np.ndarray, int, Any]]:
        c = self.ex.coordinator
        ids = self.ids[positions]
        # clients nobody holds yet: wait for their process to register (bounded)
        c.wait_for(lambda: bool((c.owner[ids] >= 0).all()), self.ex.join_timeout_s)
        owners = c.owners(ids)
        sent = []
        for slot in np.unique(owners):
            pos = positions[owners == slot]
            if slot < 0:
                sent.append((pos, -1, None))
                continue
            t = c.add_task(int(slot), self.kind, self.ids[pos], self.parts_of(pos), self.spec,
                           float(np.sum(self.w[pos])), self.keep_local)
            self.out.append(t)
            sent.append((pos, int(slot), t))
        return sent

    def ready(self, calls: list[Call], timeout: float | None) -> list[Call]:
        """The answered calls, waiting up to ``timeout``. First and every heartbeat interval
        meanwhile, a call whose client process has fallen silent (no contact for 3 heartbeats:
        it died or lost its network) is made late now — its deadline set to the present — so
        the dispatch policy treats it as a straggler at once instead of after
        ``round_timeout_s``."""
        orphans = [call for call in calls if call.handle is None]
        if orphans:
            return orphans
        c = self.ex.coordinator
        by_task = {id(call.handle): call for call in calls}
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            done = c.wait_done([call.handle for call in calls], 0.0)
            if done:
                return [by_task[id(t)] for t in done]
            silent = set(c.silent())    # checked before waiting: a process dead for rounds
            late = [call for call in calls if call.slot in silent]
            if late:
                for call in late:
                    call.deadline = time.monotonic()
                    call.late = (f"client process silent for {SILENT_HEARTBEATS * c.heartbeat_s:g}"
                                 f" s ({SILENT_HEARTBEATS:g} missed heartbeats)")
                log.warning("grpc: client process(es) %s silent for %g s (3 heartbeats): their "
                            "jobs are stragglers", sorted({call.slot for call in late}),
                            SILENT_HEARTBEATS * c.heartbeat_s)
                return []
            left = None if end is None else max(0.0, end - time.monotonic())
            step = c.heartbeat_s if left is None else min(c.heartbeat_s, left)
            if c.wait_done([call.handle for call in calls], step):
                continue                # answered meanwhile: returned at the loop's top
            if left is not None and left <= step:
                return []

    def result(self, call: Call) -> Any:
        c = self.ex.coordinator
        t: ServerTask | None = call.handle
        if t is None:
            raise CallFailed(f"no client process holds clients "
                             f"{self.ids[call.positions][:10].tolist()} (none registered them "
                             f"within executor.join_timeout_s={self.ex.join_timeout_s:g} s)")
        if t.state == "failed":
            c.forget(t)
            raise CallFailed(t.error or "task failed")
        r = c.take(t)
        self.fold(call, r)
        return None

    def replace(self, call: Call, reason: str) -> None:
        if call.handle is not None:
            self.ex.coordinator.cancel(call.handle)

    def cancel_all(self) -> None:
        for t in self.out:
            if t.state in ("queued", "sent", "done"):
                self.ex.coordinator.cancel(t)
        for t in self.out:
            self.ex.coordinator.forget(t)
