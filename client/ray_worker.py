"""The Ray worker: one actor owns a shard of clients and trains any subset of them, vectorized.

A worker is built from the run config alone (plus the few coordinator-side objects that are not
in it: the client optimizer, the trainer's local program and, for a user-supplied
model, the module itself). It generates or loads the federated data set ON the worker with
``build_dataset(config["data"], seed)`` and keeps only the train rows of its shard
(:func:`fedopt.client.shard.shard_dataset`), so client data never goes through the coordinator;
Synthetic held in memory is streamed and only the shard's rows are kept
(:func:`fedopt.client.shard.build_shard`), so such a worker never holds the whole set. Each
call receives the global parameters (a zero-copy object-store view), the ids to run and their
weights, and returns the shard's weighted sum Σ_i w_i (y_{i,K} − x) — the same quantity the
in-process :class:`~fedopt.engine.executor.VectorizedExecutor` computes, by the same code.

If it is asked for clients outside its shard (their worker died and they were reassigned), it
rebuilds the data set from the config and adds their rows; the minibatch plan is keyed by
(seed, round, global client id), so the result does not depend on which worker ran a client.

The class is plain Python (testable without Ray); :mod:`fedopt.server.ray_pool` wraps it with
``ray.remote`` as a threaded actor. Training holds a lock (one device, one job at a time); an
injected delay is slept outside it, so a simulated straggler does not block the next job.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fedopt.protocols.ray_messages import Arrays, ShardResult, to_arrays, to_tensors
from fedopt.client.shard import (build_shard, data_fingerprint, release_freed_memory,
                                 shard_dataset)
from fedopt.data import FederatedDataset, build_dataset
from fedopt.engine.contract import SharedStart
from fedopt.engine.executor import VectorizedExecutor
from fedopt.engine.local import FunctionalModel, LocalTrainer
from fedopt.engine.program import LocalProgram
from fedopt.models import build_model
from fedopt.optim.core import FunctionalOptimizer
from fedopt.dtypes import DTYPES



@dataclass
class WorkerSpec:
    """Everything a worker needs to rebuild the coordinator's local-training setup.

    ``config``: the validated run config (``seed``, ``data``, ``model``, ``client``,
    ``executor``); ``device``: where this worker trains (``"cpu"``, ``"cuda"`` — inside a Ray
    actor with GPUs, index 0 is its own GPU); ``optimizer``/``trainer_class``/``program``/
    ``trainer_seed``: the coordinator's :class:`LocalTrainer` (its class, so a user's trainer
    subclass runs on the workers too, and its :class:`LocalProgram`, shipped as data: loss,
    metrics, oracle, postprocessors); ``model``: a CPU copy of
    the coordinator's module when it is not the one ``config["model"]`` builds (None otherwise);
    ``num_threads``: torch intra-op threads on the worker.
    """

    config: dict[str, Any]
    device: str
    optimizer: FunctionalOptimizer
    trainer_class: type = LocalTrainer
    program: LocalProgram = field(default_factory=LocalProgram)
    trainer_seed: int = 0
    model: nn.Module | None = None
    num_threads: int | None = None


def resolve_device(requested: str) -> tuple[torch.device, str | None]:
    """The device to train on and, when it differs from ``requested``, why (CPU fallback)."""
    dev = torch.device(requested)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return torch.device("cpu"), f"{requested} requested but no CUDA device is visible: using cpu"
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            return torch.device("cuda", 0), (f"{requested} is not visible to this worker "
                                             f"({torch.cuda.device_count()} visible): using cuda:0")
    return dev, None


class ShardWorker:
    """Trains the clients it is given, from a shard of the federated data set it builds itself."""

    def __init__(self, spec: WorkerSpec, slot: int, shard_ids: np.ndarray):
        cfg = spec.config
        if spec.num_threads:
            torch.set_num_threads(int(spec.num_threads))
        self.spec = spec
        self.slot = int(slot)
        self.device, self.device_note = resolve_device(spec.device)
        self.dtype = DTYPES[cfg["executor"]["dtype"]]
        self.seed = int(cfg["seed"])
        self._lock = threading.Lock()
        self._holds: dict[str, threading.Event] = {}   # coded_tasks calls holding answers

        ids = np.asarray(shard_ids, dtype=np.int64)
        shard, self.fingerprint = self._load(ids)
        self._held = np.zeros(shard.num_clients, dtype=bool)
        self._held[ids] = True
        self.data_rebuilds = 0

        model = build_model(spec.model if spec.model is not None else cfg["model"],
                            tuple(shard.feature_shape), shard.num_classes, seed=self.seed,
                            device=self.device, dtype=self.dtype)
        self.trainer = spec.trainer_class(FunctionalModel(model), spec.optimizer,
                                          spec.program, seed=spec.trainer_seed)
        self.executor = self._make_executor(shard, cfg["executor"]["chunk_size"])

    # -- data ---------------------------------------------------------------------------------
    def _load(self, client_ids: np.ndarray) -> tuple[FederatedDataset, dict]:
        """The train rows of ``client_ids`` (a copy; no test rows) on the worker's device in
        the run dtype, and the whole data set's fingerprint, built from the config on this
        worker. Synthetic in memory is streamed keeping only those rows (:func:`build_shard`:
        the shard plus one chunk, never the whole set); any other data set is built whole on
        the CPU (or its store reopened), fingerprinted, cut, and the rest freed."""
        data = self.spec.config["data"]
        built = build_shard(data, self.seed, client_ids, self.dtype)
        if built is None:
            full = build_dataset(data, seed=self.seed).to("cpu", dtype=self.dtype)
            built = shard_dataset(full, client_ids), data_fingerprint(full)
            del full                # the whole data set is not kept: only the shard's rows
        release_freed_memory()
        shard, fingerprint = built
        return shard.to(self.device, dtype=self.dtype), fingerprint

    def _make_executor(self, shard: FederatedDataset, chunk_size: int | None) -> VectorizedExecutor:
        client = self.spec.config["client"]
        return VectorizedExecutor(shard, self.trainer, batch_size=client["batch_size"],
                                  local_steps=client["local_steps"],
                                  local_epochs=client["local_epochs"], seed=self.seed,
                                  chunk_size=chunk_size, on_nonfinite="report")

    def ensure_clients(self, client_ids: np.ndarray) -> int:
        """Load the rows of any of ``client_ids`` this worker does not hold yet (builds the
        shard of the enlarged held set from the config once: :meth:`_load`); returns how many
        clients were added."""
        ids = np.asarray(client_ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self._held.size):
            raise IndexError(f"client ids must lie in 0..{self._held.size - 1}")
        missing = ids[~self._held[ids]]
        if missing.size == 0:
            return 0
        held = self._held.copy()
        held[missing] = True
        shard, _ = self._load(np.flatnonzero(held))
        self._held = held
        self.executor = self._make_executor(shard, self.executor.chunk_size)
        self.data_rebuilds += 1
        return int(np.unique(missing).size)

    @property
    def held_clients(self) -> np.ndarray:
        return np.flatnonzero(self._held)

    # -- calls from the coordinator -------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Where and how this worker runs (also the 'ready' handshake of a new actor)."""
        node = None
        try:
            import ray

            if ray.is_initialized():
                node = ray.get_runtime_context().get_node_id()
        except Exception:  # pragma: no cover - outside Ray
            node = None
        return {"slot": self.slot, "pid": os.getpid(), "host": socket.gethostname(), "node_id": node,
                "device": str(self.device), "device_note": self.device_note,
                "num_threads": torch.get_num_threads(), "held_clients": int(self._held.sum()),
                "fingerprint": self.fingerprint, "chunk_size": self.executor.chunk_size}

    def ping(self) -> float:
        return time.time()

    def memory(self) -> dict[str, Any]:
        """What this worker holds, in bytes: ``rows`` / ``test_rows`` of its data set (its
        shard: the held clients' train rows, no test rows — evaluation runs on the
        coordinator), ``data_bytes`` (that data set's tensors), ``tensor_bytes`` (every live
        tensor storage of the process, each counted once: data, model, buffers — a stray copy
        of the whole data set would show here), and the process's ``rss`` / ``uss`` (resident
        and unique set sizes; None where psutil is missing)."""
        import gc

        data = self.executor.data
        tensors = (data.x, data.y, data.offsets, data.x_test, data.y_test, data.client_test)
        gc.collect()
        storages: dict[int, int] = {}
        for obj in gc.get_objects():
            if (issubclass(type(obj), torch.Tensor) and obj.layout is torch.strided
                    and obj.device.type != "meta"):
                st = obj.untyped_storage()
                storages[st.data_ptr()] = st.nbytes()
        try:
            import psutil

            mem = psutil.Process(os.getpid()).memory_full_info()
            rss, uss = int(mem.rss), int(mem.uss)
        except ImportError:
            rss = uss = None
        return {"rows": int(data.x.shape[0]), "test_rows": int(data.x_test.shape[0]),
                "data_bytes": sum(t.numel() * t.element_size() for t in tensors),
                "tensor_bytes": sum(storages.values()), "rss": rss, "uss": uss}

    def run_jobs(self, starts: Arrays, rows: np.ndarray | None, client_ids: np.ndarray,
                 keys: np.ndarray, weights: np.ndarray,
                 optimizer: FunctionalOptimizer | None = None, keep_local: bool = False,
                 correction: Arrays | None = None, delay_s: float = 0.0) -> ShardResult:
        """Local jobs: job j trains ``client_ids[j]`` from ``starts`` (one shared model when
        ``rows`` is None, else row ``rows[j]`` of the stacked per-job starts of the whole call)
        with minibatches keyed by ``keys[j]``; Σ_j w_j Δ_j over them
        (:meth:`VectorizedExecutor.run_jobs`, the same code).

        Jobs with non-finite results are checked here, on the worker, left out of the sums
        and listed in ``ShardResult.nonfinite`` (the coordinator applies the run's policy).
        ``correction`` is stacked [len(client_ids), ...] in the order of ``client_ids``;
        ``delay_s`` > 0 holds the answer until ``delay_s`` seconds after the call started (an
        injected compute time for straggler studies; real time counts towards it).
        """
        start = time.perf_counter()
        ids = np.asarray(client_ids, dtype=np.int64)
        with self._lock:
            self.ensure_clients(ids)
            t0 = time.perf_counter()
            if rows is None:
                begin = SharedStart(to_tensors(starts, self.device, self.dtype))
            else:   # this shard's rows only (a copy of them, not of the whole stack)
                rows = np.asarray(rows, dtype=np.int64)
                begin = to_tensors({k: np.asarray(v)[rows] for k, v in starts.items()},
                                   self.device, self.dtype)
            corr = to_tensors(correction, self.device, self.dtype)
            out = self.executor.run_jobs(begin, ids, np.asarray(keys, dtype=np.int64),
                                         np.asarray(weights, dtype=np.float64),
                                         optimizer=optimizer, correction=corr,
                                         keep_local=keep_local)
            result = ShardResult(client_ids=ids, delta_sum=to_arrays(out.delta_sum),
                                 weight_sum=out.weight_sum, loss_sum=out.loss_sum,
                                 samples=out.samples, updates=out.updates, steps=out.steps,
                                 local_loss=out.local_loss, batch_size=out.batch_size,
                                 nonfinite=out.nonfinite,
                                 local_params=to_arrays(out.local_params) if keep_local else None,
                                 compute_s=time.perf_counter() - t0,
                                 worker={"slot": self.slot, "pid": os.getpid(),
                                         "device": str(self.device),
                                         "chunk_size": self.executor.chunk_size})
        remaining = float(delay_s) - (time.perf_counter() - start)
        if remaining > 0:
            time.sleep(remaining)
        result.finished_at = time.time()
        return result

    def coded_tasks(self, call_id: str, params_list: list[Arrays], tasks: list[tuple],
                    job_keys: list[int] | None = None, delays: list[float] | None = None):
        """Coded gradient tasks of one round (gradient coding, :mod:`fedopt.server.ray_coded`):
        a *generator* yielding one answer per coded worker.

        ``tasks``: ``[(worker, [(job, client_ids, coefs), ...]), ...]`` — coded worker
        ``worker``'s task results r = Σ_c coefs[c] · g_c(θ_job) over ``client_ids`` (float64),
        g_c = ∇F_c (the client's full local gradient, mean over its rows) or, with ``job_keys``,
        −Δ_c of one SGD step with lr 1 from θ_job on the minibatch keyed by
        ``job_keys[job]`` (the in-process executor's own plan). Every client gradient a call
        needs is computed once per job, vectorized, then shared by the coded workers hosted
        here. Answers come in the order of ``delays`` (seconds after the call started; an
        injected virtual-clock time), each held until its delay has passed, as
        ``{"worker", "results": {name: float64 [slots, d]}, "finite", "compute_s",
        "finished_at"}``; :meth:`release` ends the call early (its stragglers are not needed).
        """
        from fedopt.optim import make

        start = time.perf_counter()
        event = threading.Event()
        self._holds[call_id] = event
        try:
            with self._lock:
                t0 = time.perf_counter()
                need: dict[int, np.ndarray] = {}
                for _, slots in tasks:
                    for job, ids, _ in slots:
                        need[job] = np.union1d(need.get(job, np.zeros(0, np.int64)),
                                               np.asarray(ids, dtype=np.int64))
                self.ensure_clients(np.concatenate(list(need.values())) if need else
                                    np.zeros(0, np.int64))
                grads: dict[int, tuple[np.ndarray, dict[str, torch.Tensor]]] = {}
                for job, ids in need.items():
                    p = to_tensors(params_list[job], self.device, self.dtype)
                    if job_keys is None:
                        g = self.executor.full_gradients(p, ids)
                    else:
                        out = self.executor.run_jobs(
                            SharedStart(p), ids, np.full(len(ids), int(job_keys[job])),
                            np.ones(len(ids)), optimizer=make("sgd", lr=1.0), keep_local=True)
                        g = {k: p[k].unsqueeze(0) - v for k, v in out.local_params.items()}
                    grads[job] = (ids, {k: v.reshape(len(ids), -1).to(torch.float64)
                                        for k, v in g.items()})
                answers = []
                for worker, slots in tasks:
                    res: dict[str, list[torch.Tensor]] = {}
                    for job, ids, coefs in slots:
                        all_ids, g = grads[job]
                        pos = torch.as_tensor(np.searchsorted(all_ids, np.asarray(ids)))
                        c = torch.as_tensor(np.asarray(coefs, dtype=np.float64))
                        for k, gk in g.items():
                            res.setdefault(k, []).append(c.to(gk.device) @ gk[pos])
                    stacked = {k: torch.stack(v) for k, v in res.items()}
                    finite = all(bool(torch.isfinite(v).all()) for v in stacked.values())
                    answers.append((int(worker), to_arrays(stacked), finite))
                compute_s = time.perf_counter() - t0
            wait = [0.0] * len(answers) if delays is None else [float(d) for d in delays]
            for k in sorted(range(len(answers)), key=lambda k: (wait[k], answers[k][0])):
                remaining = wait[k] - (time.perf_counter() - start)
                if remaining > 0 and event.wait(remaining):
                    return                                    # released: nobody reads on
                worker, res, finite = answers[k]
                yield {"worker": worker, "results": res, "finite": finite,
                       "compute_s": compute_s, "finished_at": time.time()}
        finally:
            self._holds.pop(call_id, None)

    def release(self, call_id: str) -> None:
        """End :meth:`coded_tasks` call ``call_id``'s held answers now (the master decoded)."""
        event = self._holds.get(call_id)
        if event is not None:
            event.set()

    def full_gradients(self, params: Arrays, client_ids: np.ndarray) -> Arrays:
        """Stacked full local gradients ∇F_i(x) of ``client_ids`` on this worker's shard
        (:meth:`VectorizedExecutor.full_gradients`, the same code)."""
        ids = np.asarray(client_ids, dtype=np.int64)
        with self._lock:
            self.ensure_clients(ids)
            p = to_tensors(params, self.device, self.dtype)
            return to_arrays(self.executor.full_gradients(p, ids))
