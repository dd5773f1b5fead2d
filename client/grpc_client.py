"""A gRPC client process: holds some clients' data, trains them when the coordinator asks.

``fedopt client --server HOST:PORT --token TOKEN [--ca CERT] (--config CONFIG --clients 0,1,...
| --data FILE.npz)``. The process

1. connects and registers (retrying with exponential backoff while the coordinator is
   unreachable: not started yet, restarting), announcing its client ids and their row counts;
2. builds the model and the local program from the run config the coordinator returns, exactly
   as the simulation does (:func:`fedopt.simulation.build_algorithm`,
   :func:`~fedopt.simulation.client_program`), and refuses to run when its program differs from
   the coordinator's (another fedopt version, a user callable that exists only there);
3. builds its clients' data: from its config and seed as a Ray worker does (only the clients
   given, :func:`fedopt.client.shard.shard_dataset`), or from its own npz file
   (:func:`embed_clients`: the file's client k is global client ``clients[k]``);
4. polls for tasks and runs each with :class:`~fedopt.client.ray_worker.ShardWorker` — the
   same vectorized engine, minibatch plans keyed by (seed, key, global client id) — sending
   heartbeats while it trains, then submits the result (unless a heartbeat's answer said the
   task is no longer wanted: a timed-out round; then the answer is dropped unsent — training
   itself is not interrupted);
5. exits 0 when the coordinator says the run is over, 2 on a refusal it cannot fix (wrong
   token, data that disagree, a token another live process is using), 1 when the
   coordinator stays unreachable for ``max_wait_s``.

A lost connection or a replaced session (the coordinator restarted) leads to registering
again; a result the coordinator refuses as stale is dropped (the coordinator never counts it).
A coordinator too busy to take an upload (``RESOURCE_EXHAUSTED`` "coordinator busy": its
``max_buffered_results`` places are held) gets the same answer again after an exponential
backoff, without registering or training again.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedopt.client.ray_worker import ShardWorker, WorkerSpec
from fedopt.client.shard import shard_dataset
from fedopt.data import FederatedDataset, build_dataset
from fedopt.protocols import grpc_messages as M
from fedopt.protocols.grpc_codec import CodecError, Limits
from fedopt.protocols.grpc_wire import (BUSY, CHUNK_BYTES, RETRY_KEY, TOKEN_KEY,
                                        channel_options, client_credentials, frame_bytes, join,
                                        method, read_frame, split)

log = logging.getLogger("client.grpc")


class ClientExit(Exception):
    """Stop the client process with ``code`` and a one-line message."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def connection_hint(details: str, tls: bool) -> str:
    """What to check when a connection fails the way a TLS mismatch does ("" otherwise):
    ``details`` is gRPC's error text, ``tls`` whether this client uses TLS (--ca/--cert)."""
    d = details.lower()
    if tls and ("handshake" in d or "ssl" in d or "socket closed" in d):
        return ("; the TLS handshake failed: does the coordinator set executor.tls, does --ca "
                "sign its certificate for --server's host name, and with mutual TLS "
                "(executor.tls.ca) are --cert and --key given?")
    if not tls and "socket closed" in d:
        return ("; this client connects without TLS: if the coordinator sets executor.tls, "
                "pass --ca CA.pem")
    return ""


def embed_clients(data: FederatedDataset, global_ids: np.ndarray, num_clients: int
                  ) -> FederatedDataset:
    """``data``'s K clients as the global clients ``global_ids`` (k -> ``global_ids[k]``) of
    a federation of ``num_clients``; every other client has no rows (train rows only)."""
    ids = np.asarray(global_ids, dtype=np.int64)
    local = data.counts.cpu().numpy().astype(np.int64)
    if ids.shape != local.shape:
        raise ValueError(f"--clients: {ids.size} ids for the {local.size} clients of the file")
    if ids.size and (ids.min() < 0 or ids.max() >= num_clients or np.unique(ids).size != ids.size):
        raise ValueError(f"--clients: distinct ids in 0..{num_clients - 1} expected")
    counts = np.zeros(num_clients, np.int64)
    counts[ids] = local
    offsets = np.concatenate([[0], np.cumsum(counts)])
    src = data.offsets.cpu().numpy()
    order = np.argsort(ids, kind="stable")     # rows in global client order
    rows = np.concatenate([np.arange(src[k], src[k + 1]) for k in order]) if ids.size else \
        np.zeros(0, np.int64)
    rows_t = torch.from_numpy(rows)
    empty = (0,) + tuple(data.x.shape[1:])
    return FederatedDataset(x=data.x[rows_t], y=data.y[rows_t], offsets=torch.from_numpy(offsets),
                            x_test=data.x.new_zeros(empty),
                            y_test=data.y.new_zeros((0,) + tuple(data.y.shape[1:])),
                            client_test=data.offsets.new_zeros(0), num_classes=data.num_classes,
                            name=data.name)


class _Worker(ShardWorker):
    """A :class:`ShardWorker` over a given data set (this process's clients) instead of one
    rebuilt from the config."""

    def __init__(self, spec: WorkerSpec, slot: int, data: FederatedDataset):
        self._given = data
        super().__init__(spec, slot, np.flatnonzero(data.counts.cpu().numpy() > 0))

    def _build_full(self) -> FederatedDataset:
        return self._given.to("cpu", dtype=self.dtype)


@dataclass
class Options:
    server: str
    token: str
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    config: dict | None = None        # --config (loaded and validated)
    clients: np.ndarray | None = None  # --clients
    data: str | None = None           # --data FILE.npz
    device: str = "cpu"
    max_wait_s: float = 600.0
    backoff_s: float = 0.5
    max_backoff_s: float = 5.0
    poll_s: float = 10.0
    max_message_mb: float = 1024.0
    name: str = ""


class GrpcClient:
    """The client process's loop (module docstring)."""

    def __init__(self, opts: Options):
        self.opts = opts
        self.limits = Limits(max_message_bytes=int(opts.max_message_mb * (1 << 20)))
        self.metadata = ((TOKEN_KEY, opts.token),)
        self.worker: _Worker | None = None
        self.welcome: M.Welcome | None = None
        self.tasks_done = 0
        self._channel = None
        self._stubs: dict[str, Any] = {}
        self._data: FederatedDataset | None = None
        self._file: FederatedDataset | None = None
        self.name = opts.name or f"{socket.gethostname()}:{os.getpid()}"
        self.instance = secrets.token_hex(8)    # tells this process from another on its token
        self._load_data()

    # -- transport -------------------------------------------------------------------------
    def _connect(self) -> None:
        import grpc

        if self._channel is not None:
            self._channel.close()
        o = self.opts
        options = channel_options(CHUNK_BYTES * 32)
        if o.ca or o.cert:
            self._channel = grpc.secure_channel(o.server, client_credentials(o.ca, o.cert, o.key),
                                                options=options)
        else:
            self._channel = grpc.insecure_channel(o.server, options=options)
        kw = {"request_serializer": frame_bytes, "response_deserializer": read_frame}
        ch = self._channel
        self._stubs = {"Register": ch.unary_unary(method("Register"), **kw),
                       "Poll": ch.unary_stream(method("Poll"), **kw),
                       "Submit": ch.stream_unary(method("Submit"), **kw),
                       "Heartbeat": ch.unary_unary(method("Heartbeat"), **kw)}

    def _call(self, name: str, msg: M.Message, expect: tuple, timeout: float) -> M.Message:
        stub = self._stubs[name]
        if name == "Poll":
            frames = stub(next(split(M.pack(msg))), metadata=self.metadata, timeout=timeout)
        elif name == "Submit":
            frames = [stub(split(M.pack_parts(msg)), metadata=self.metadata, timeout=timeout)]
        else:
            frames = [stub(next(split(M.pack(msg))), metadata=self.metadata, timeout=timeout)]
        return M.unpack(join(frames, self.limits.max_message_bytes), expect, self.limits)

    # -- data and registration -------------------------------------------------------------
    def _load_data(self) -> None:
        """This process's clients: ids, row counts, and (``--config``) their rows."""
        o = self.opts
        if o.data is not None:
            self._file = build_dataset({"name": "npz", "path": o.data}, seed=0)
            ids = o.clients if o.clients is not None else np.arange(self._file.num_clients)
            self._ids = np.asarray(ids, np.int64)
            self._counts = self._file.counts.cpu().numpy().astype(np.int64)
            if self._ids.shape != self._counts.shape:
                raise ClientExit(2, f"--clients: {self._ids.size} ids for the "
                                    f"{self._counts.size} clients of {o.data}")
        else:
            full = build_dataset(o.config["data"], seed=int(o.config["seed"]))
            self._ids = np.unique(np.asarray(o.clients, np.int64))
            if self._ids.size == 0 or self._ids.min() < 0 or self._ids.max() >= full.num_clients:
                raise ClientExit(2, f"--clients: ids in 0..{full.num_clients - 1} expected")
            self._data = shard_dataset(full, self._ids)
            self._counts = full.counts.cpu().numpy().astype(np.int64)[self._ids]

    def _build_worker(self, welcome: M.Welcome) -> None:
        from fedopt.engine.local import LocalTrainer
        from fedopt.local.config import with_local_training
        from fedopt.optim import from_config as optimizer_from_config
        from fedopt.simulation import build_algorithm, client_program

        cfg = welcome.config
        if self.opts.config is not None:
            for k in ("seed", "data"):
                if self.opts.config.get(k) != cfg.get(k):
                    raise ClientExit(2, f"--config: {k} differs from the coordinator's "
                                        f"({self.opts.config.get(k)!r} here, {cfg.get(k)!r} "
                                        f"there): both sides must build the same data set")
        else:
            self._data = embed_clients(self._file, self._ids, welcome.num_clients)
        data = self._data
        seed = int(cfg["seed"])
        algorithm = build_algorithm(cfg["algorithm"], welcome.counts, seed, cfg)
        program = client_program(algorithm.local_program(), cfg["client"], data.is_regression,
                                 regression_by_name=cfg["data"]["name"] == "regression")
        # client.batch_size_test / sso / curriculum, as the coordinator's Simulation adds them
        program = with_local_training(program, cfg["client"],
                                      optimizer_from_config(cfg["client"]["optimizer"]))
        if M.describe(program) != welcome.program:
            raise ClientExit(2, f"this client's local program differs from the coordinator's "
                                f"(same fedopt version on both? user callables cannot travel): "
                                f"{M.describe(program)} here, {welcome.program} there")
        if welcome.num_classes:
            data = self._data = dataclasses.replace(data, num_classes=welcome.num_classes)
        spec = WorkerSpec(config=cfg, device=self.opts.device,
                          optimizer=optimizer_from_config(cfg["client"]["optimizer"]),
                          trainer_class=LocalTrainer, program=program, trainer_seed=seed)
        self.worker = _Worker(spec, welcome.slot, data)

    def register(self) -> None:
        """Register, retrying with exponential backoff while the coordinator is unreachable;
        builds the worker from the first welcome (again if the run config changed)."""
        import grpc

        waited, delay, in_use = 0.0, self.opts.backoff_s, False
        while True:
            try:
                self._connect()
                msg = M.Register(client_ids=self._ids, counts=self._counts, name=self.name,
                                 instance=self.instance)
                welcome = self._call("Register", msg, (M.Welcome,), timeout=60.0)
                break
            except grpc.RpcError as e:
                code = e.code()
                if code == grpc.StatusCode.ALREADY_EXISTS:
                    # another live process holds this token; wait once until it would count
                    # silent (it may have just died: a restarted client), then give up
                    if in_use:
                        raise ClientExit(2, f"the coordinator refused this client: "
                                            f"{e.details()}") from None
                    in_use = True
                    after = dict(e.trailing_metadata() or ()).get(RETRY_KEY, "0")
                    log.warning("%s; registering again in %.1f s", e.details(),
                                float(after) + 0.5)
                    time.sleep(float(after) + 0.5)
                    continue
                if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.FAILED_PRECONDITION,
                            grpc.StatusCode.INVALID_ARGUMENT):
                    raise ClientExit(2, f"the coordinator refused this client: {code.name}: "
                                        f"{e.details()}") from None
                hint = connection_hint(e.details() or "", bool(self.opts.ca or self.opts.cert))
                if waited >= self.opts.max_wait_s:
                    raise ClientExit(1, f"coordinator {self.opts.server} unreachable for "
                                        f"{waited:.0f} s ({code.name}: {e.details()}){hint}"
                                     ) from None
                if hint and not waited:     # a configuration error: say so before retrying
                    log.warning("cannot connect to %s%s (retrying for --max-wait %g s)",
                                self.opts.server, hint, self.opts.max_wait_s)
                log.info("coordinator unreachable (%s); retrying in %.1f s", code.name, delay)
                time.sleep(delay)
                waited += delay
                delay = min(delay * 2, self.opts.max_backoff_s)
        if self.welcome is None or self.welcome.config != welcome.config:
            self._build_worker(welcome)
        self.welcome = welcome
        log.info("registered as slot %d (session %s..., epoch %s)", welcome.slot,
                 welcome.session[:6], welcome.epoch)

    # -- tasks -----------------------------------------------------------------------------
    def run_task(self, task: M.Task) -> M.Message:
        w = self.worker
        s = self.welcome
        try:
            if task.kind == "grad":
                grads = w.full_gradients(task.starts, task.client_ids)
                return M.Result(session=s.session, epoch=s.epoch, task_id=task.task_id,
                                client_ids=task.client_ids, grads=_plain(grads))
            if task.kind != "run":
                raise ValueError(f"unknown task kind {task.kind!r}")
            rows = None if task.shared else np.arange(len(task.client_ids))
            r = w.run_jobs(task.starts, rows, task.client_ids, task.keys, task.weights,
                           optimizer=M.build_optimizer(task.optimizer),
                           keep_local=task.keep_local, correction=task.correction,
                           delay_s=task.delay_s)
            local, local_loss = r.local_params, r.local_loss
            nonfinite = np.asarray(r.nonfinite, np.int64)
            if task.keep_local and nonfinite.size:   # their rows are never used: send zeros
                local = {k: v.copy() for k, v in local.items()}
                for v in local.values():
                    v[nonfinite] = 0
                local_loss = np.where(np.isin(np.arange(len(local_loss)), nonfinite), 0.0,
                                      local_loss)
            return M.Result(session=s.session, epoch=s.epoch, task_id=task.task_id,
                            client_ids=task.client_ids, delta_sum=_plain(r.delta_sum),
                            weight_sum=float(r.weight_sum), loss_sum=float(r.loss_sum),
                            samples=int(r.samples), updates=int(r.updates),
                            steps=np.asarray(r.steps, np.int64), nonfinite=nonfinite,
                            batch_size=None if r.batch_size is None
                            else np.asarray(r.batch_size, np.int64),
                            local_loss=None if local_loss is None
                            else np.asarray(local_loss, np.float64),
                            local_params=_plain(local) if task.keep_local else None,
                            compute_s=float(r.compute_s))
        except Exception as e:   # the coordinator's policy decides (retry, then fail the run)
            log.exception("task %d failed", task.task_id)
            return M.Failure(session=s.session, epoch=s.epoch, task_id=task.task_id,
                             error=f"{type(e).__name__}: {e}"[:500])

    def submit(self, answer: M.Message, unwanted: threading.Event | None = None
               ) -> M.Ack | None:
        """Submit ``answer``; while the coordinator is busy (``RESOURCE_EXHAUSTED`` with
        :data:`~fedopt.protocols.grpc_wire.BUSY`) submit the same answer again after an
        exponential backoff (``backoff_s`` doubling to ``max_backoff_s``) for up to
        ``max_wait_s``, unless ``unwanted`` is set meanwhile (None returned); any other error
        is raised (grpc.RpcError)."""
        import grpc

        waited, delay = 0.0, self.opts.backoff_s
        while True:
            try:
                return self._call("Submit", answer, (M.Ack,), timeout=600.0)
            except grpc.RpcError as e:
                busy = (e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                        and (e.details() or "").startswith(BUSY))
                if not busy or waited >= self.opts.max_wait_s:
                    raise
                if unwanted is not None and unwanted.is_set():
                    return None
                log.info("coordinator busy (%s); submitting task %d again in %.1f s",
                         e.details(), answer.task_id, delay)
            time.sleep(delay)
            waited += delay
            delay = min(delay * 2, self.opts.max_backoff_s)

    def _heartbeats(self, task_id: int, stop: threading.Event, unwanted: threading.Event
                    ) -> None:
        """Heartbeat every ``heartbeat_s`` until ``stop``; set ``unwanted`` when the
        coordinator answers that the task is no longer wanted (cancelled, timed out)."""
        import grpc

        while not stop.wait(self.welcome.heartbeat_s):
            try:
                ack = self._call("Heartbeat", M.Heartbeat(session=self.welcome.session,
                                                          task_id=task_id), (M.Ack,),
                                 timeout=10.0)
            except (grpc.RpcError, CodecError):
                continue
            if not ack.ok and not unwanted.is_set():
                log.info("task %d: %s (its answer will not be sent)", task_id, ack.reason)
                unwanted.set()

    def work(self, task: M.Task) -> M.Ack | None:
        """Run ``task`` with heartbeats and submit its answer; None when the coordinator said
        meanwhile that it no longer wants it (the answer is not sent: it would be refused as
        stale after taking an upload place and the upload's time)."""
        stop, unwanted = threading.Event(), threading.Event()
        beat = threading.Thread(target=self._heartbeats, args=(task.task_id, stop, unwanted),
                                daemon=True)
        beat.start()
        try:                              # heartbeats go on while a busy coordinator waits
            answer = self.run_task(task)
            if unwanted.is_set():
                return None
            return self.submit(answer, unwanted)
        finally:
            stop.set()

    def serve(self) -> int:
        """Register, then work until told to shut down; returns the exit code."""
        import grpc

        self.register()
        while True:
            try:
                msg = self._call("Poll", M.Poll(session=self.welcome.session,
                                                wait_s=self.opts.poll_s),
                                 (M.Task, M.Idle, M.Shutdown),
                                 timeout=self.opts.poll_s + 600)   # includes the download
                if isinstance(msg, M.Shutdown):
                    log.info("coordinator: %s; exiting", msg.reason)
                    return 0
                if isinstance(msg, M.Idle):
                    continue
                ack = self.work(msg)
                self.tasks_done += 1
                if ack is not None and not ack.ok:
                    log.warning("result of task %d refused: %s", msg.task_id, ack.reason)
            except grpc.RpcError as e:
                code = e.code()
                if code == grpc.StatusCode.UNAUTHENTICATED:
                    raise ClientExit(2, f"the coordinator refused this client: {e.details()}")
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    log.error("the coordinator refused a message: %s", e.details())
                    continue
                log.info("connection lost or session replaced (%s: %s); registering again",
                         code.name, e.details())
                self.register()
            except CodecError as e:
                log.error("malformed message from the coordinator: %s; registering again", e)
                self.register()


def _plain(arrays: dict | None) -> dict | None:
    """Contiguous numpy arrays (the codec sends raw bytes)."""
    if arrays is None:
        return None
    return {k: np.ascontiguousarray(v) for k, v in arrays.items()}
