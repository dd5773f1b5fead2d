"""The in-process vectorized executor: a call's local jobs, chunk by chunk.

It implements :class:`~fedopt.engine.contract.Executor`: ``run_jobs`` returns the weighted sum
Σ_j w_j Δ_j (plus statistics) — the same quantity a Ray worker returns for its shard, so the
server logic does not care where clients ran.

Non-finite clients (NaN/±inf final parameters or mean local loss, see
:mod:`fedopt.engine.nonfinite`) are found with one vectorized reduction per chunk and never
enter the sums; the executor's ``on_nonfinite`` policy then raises
:class:`~fedopt.engine.nonfinite.NonFiniteError` (``"error"``), renormalises the sums over the
other clients (``"drop"``, :func:`drop_scale`) or, on a Ray worker (``"report"``), leaves the
raw sums for the coordinator, which applies the run's policy to the whole round.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fedopt.data import FederatedDataset
from fedopt.data.store import read_ahead
from fedopt.engine.batches import (capped_batch_size, local_step_counts, plan_batches,
                                   plan_bytes)
from fedopt.engine.contract import Params, RoundOutput, SharedStart, Starts
from fedopt.engine.evaluate import evaluation_row
from fedopt.engine.local import LocalTrainer
from fedopt.engine.nonfinite import POLICIES, check_policy, client_error, finite_rows
from fedopt.engine.program import Batch
from fedopt.memory import available_memory_bytes
from fedopt.optim.core import FunctionalOptimizer

#: executor policies: the run's ``on_nonfinite`` values, plus a worker's "report" (sums over the
#: finite clients, not renormalised, never raises: the coordinator decides)
EXECUTOR_POLICIES = (*POLICIES, "report")


def drop_scale(weight_sum: float, kept_weight: float) -> float:
    """The factor Σ_{all} w / Σ_{kept} w that turns a weighted sum over the kept clients into
    the sum the aggregation rule gives when its weights are renormalised over them — the rule
    for clients that did not return (Ray stragglers, non-finite clients under ``drop``).
    1.0 when nothing was left out or nothing was kept (then the sum is empty)."""
    if kept_weight <= 0 or kept_weight == weight_sum:
        return 1.0
    return weight_sum / kept_weight


def auto_chunk_size(params: Params, optimizer: FunctionalOptimizer, batch_size: int,
                    row_numel: int, device: torch.device, fraction: float = 0.25,
                    cap: int = 4096, plan_bytes_per_client: int = 0) -> int:
    """Clients per chunk so that their stacked state fits in ``fraction`` of free memory.

    Per client: parameters, gradient, SAM/prox temporaries and optimizer buffers (~6 copies
    plus the buffers), a minibatch with a generous activation factor, and its share of the
    minibatch plan (``plan_bytes_per_client``, see :func:`~fedopt.engine.batches.plan_bytes`).
    """
    elem = next(iter(params.values())).element_size()
    n_params = sum(p.numel() for p in params.values())
    copies = 6 + len(optimizer.buffer_names()) + (optimizer.m if hasattr(optimizer, "m") else 0)
    per_client = elem * (n_params * copies + batch_size * row_numel * 8) + plan_bytes_per_client
    return int(max(1, min(cap, fraction * available_memory_bytes(device) // per_client)))


def job_samples(counts: np.ndarray, batch_size: int, local_steps: int | None,
                local_epochs: int | None) -> np.ndarray:
    """Real samples behind one local job of each client: u_i steps through epochs of
    s_i = ⌈n_i/B⌉ minibatches (only the last one partial) give ⌊u_i/s_i⌋·n_i + (u_i mod s_i)·B."""
    counts = np.asarray(counts, dtype=np.int64)
    steps = local_step_counts(counts, batch_size, local_steps, local_epochs)
    per_epoch = np.maximum(-(-counts // batch_size), 1)
    return (steps // per_epoch) * counts + (steps % per_epoch) * batch_size


#: rows gathered per chunk of the full-gradient pass (clients × max rows)
FULL_GRADIENT_ROWS = 1 << 16


class VectorizedExecutor:
    """Runs clients in-process, all clients of a chunk stacked along a leading dimension.

    Implements :class:`~fedopt.engine.contract.Executor` (see there for shapes and units)."""

    name = "local"

    def __init__(self, dataset: FederatedDataset, trainer: LocalTrainer, *, batch_size: int,
                 local_steps: int | None, local_epochs: int | None, seed: int,
                 chunk_size: int | None = None, on_nonfinite: str = "error"):
        if on_nonfinite not in EXECUTOR_POLICIES:
            raise ValueError(f"on_nonfinite: one of {POLICIES}, got {on_nonfinite!r}")
        self.on_nonfinite = on_nonfinite
        self.data = dataset
        self.trainer = trainer
        self.batch_size = batch_size
        self.local_steps, self.local_epochs = local_steps, local_epochs
        self.seed = seed
        self.chunk_size = chunk_size
        self.offsets = dataset.offsets.cpu().numpy()
        self.counts = np.diff(self.offsets)
        self.device = dataset.x.device

    @classmethod
    def from_config(cls, config: dict, dataset: FederatedDataset, trainer: LocalTrainer
                    ) -> "VectorizedExecutor":
        client = config["client"]
        # ``dataset`` is the whole federation here, so this is Simulation's cap (a no-op after it)
        batch_size = capped_batch_size(client["batch_size"], dataset.counts.cpu().numpy())
        return cls(dataset, trainer, batch_size=batch_size,
                   local_steps=client["local_steps"], local_epochs=client["local_epochs"],
                   seed=config["seed"], chunk_size=config["executor"]["chunk_size"],
                   on_nonfinite=check_policy(config.get("on_nonfinite", "error")))

    # -- the contract's declared facts ---------------------------------------------------------
    @property
    def optimizer(self) -> FunctionalOptimizer:
        """The client optimizer of jobs run without one (the trainer's)."""
        return self.trainer.optimizer

    def job_samples(self, client_ids: np.ndarray) -> np.ndarray:
        """int64 [m]: real samples one local job of each of ``client_ids`` processes."""
        ids = np.asarray(client_ids, dtype=np.int64)
        return job_samples(self.counts[ids], self.batch_size, self.local_steps,
                           self.local_epochs)

    def faults(self) -> dict[str, int]:
        """Nothing fails in-process: ``{}``."""
        return {}

    def close(self) -> None:
        """Nothing to release in-process (Ray executors stop their actors here)."""

    def _chunk(self, params: Params) -> int:
        if self.chunk_size:
            return int(self.chunk_size)
        row_numel = int(np.prod(self.data.x.shape[1:])) if self.data.x.ndim > 1 else 1
        held = self.counts[self.counts > 0]     # a Ray shard's other clients have no rows
        max_steps = int(local_step_counts(held, self.batch_size, self.local_steps,
                                          self.local_epochs).max()) if held.size else 0
        self.chunk_size = auto_chunk_size(params, self.trainer.optimizer, self.batch_size,
                                          row_numel, self.device,
                                          plan_bytes_per_client=plan_bytes(max_steps, 1,
                                                                           self.batch_size))
        return self.chunk_size

    # -- local jobs ----------------------------------------------------------------------------
    def run_jobs(self, starts: Starts, client_ids: np.ndarray, keys: np.ndarray,
                 weights: np.ndarray, optimizer: FunctionalOptimizer | None = None,
                 correction: Params | None = None, keep_local: bool = False) -> RoundOutput:
        """Job j trains client ``client_ids[j]`` from ``starts[j]`` (stacked [m, ...]) or the
        :class:`~fedopt.engine.contract.SharedStart` with minibatches keyed by ``keys[j]``;
        returns Σ_j w_j (y_j − start_j) (:class:`~fedopt.engine.contract.Executor`).

        Job j's result is that of job j run alone; a shared start with one key for every job
        is one synchronous round (:meth:`run_round`), and stacked equal starts with equal keys
        give the same bits. ``correction`` (stacked [m, ...]) is added to every local gradient
        of the matching job; ``keep_local`` also returns the stacked y_j and each job's mean
        local loss. Raises :class:`~fedopt.engine.nonfinite.NonFiniteError` naming the
        non-finite clients under ``on_nonfinite="error"`` (module docstring).
        """
        client_ids = np.asarray(client_ids, dtype=np.int64)
        keys = np.asarray(keys, dtype=np.int64)
        if keys.shape != client_ids.shape:
            raise ValueError(f"keys: one per job expected, got {keys.shape} for "
                             f"{client_ids.shape} jobs")
        if isinstance(starts, SharedStart):
            if len(keys) == 0 or bool((keys == keys[0]).all()):
                key = int(keys[0]) if len(keys) else 0
                return self._run(starts.params, False, client_ids, key, weights, optimizer,
                                 keep_local, correction)
            m = len(client_ids)
            starts = {k: v.unsqueeze(0).expand((m,) + v.shape) for k, v in starts.params.items()}
        return self._run(starts, True, client_ids, keys, weights, optimizer, keep_local,
                         correction)

    def run_round(self, params: Params, client_ids: np.ndarray, weights: np.ndarray,
                  key: int, optimizer: FunctionalOptimizer | None = None,
                  keep_local: bool = False, correction: Params | None = None) -> RoundOutput:
        """One synchronous round: :meth:`run_jobs` from the shared ``params``, every job keyed
        by ``key`` (the round)."""
        ids = np.asarray(client_ids, dtype=np.int64)
        return self.run_jobs(SharedStart(params), ids, np.full(len(ids), int(key)), weights,
                             optimizer=optimizer, correction=correction, keep_local=keep_local)

    def full_gradients(self, params: Params, client_ids: np.ndarray) -> Params:
        """Stacked ∇F_i(x) = (1/n_i) Σ_{r∈D_i} ∇ℓ(x; r) for ``client_ids`` at the one model
        ``params`` ([m, ...]; SCAFFOLD option I, gradient coding): the trainer's batched
        gradient over each client's rows, padded to the largest client of a chunk with zero
        weights, at most :data:`FULL_GRADIENT_ROWS` rows gathered at once."""
        data = self.data
        ids = np.asarray(client_ids, dtype=np.int64)
        n = self.offsets[ids + 1] - self.offsets[ids]
        chunk = max(1, FULL_GRADIENT_ROWS // max(int(n.max()) if len(n) else 1, 1))
        parts: list[Params] = []
        dev = data.x.device
        for lo in range(0, len(ids), chunk):
            cid, cn = ids[lo:lo + chunk], n[lo:lo + chunk]
            width = int(cn.max())
            pos = np.arange(width)[None, :]
            rows = self.offsets[cid][:, None] + np.minimum(pos, cn[:, None] - 1)
            rows_t = torch.as_tensor(rows, device=dev)
            xb = data.x.index_select(0, rows_t.flatten()).view(rows.shape + tuple(data.x.shape[1:]))
            yb = data.y.index_select(0, rows_t.flatten()).view(rows.shape + tuple(data.y.shape[1:]))
            wn = torch.as_tensor((pos < cn[:, None]) / cn[:, None], dtype=data.x.dtype, device=dev)
            y = {k: v.unsqueeze(0).expand((len(cid),) + v.shape) for k, v in params.items()}
            g, _ = self.trainer.batched_grad(y, Batch(xb, yb, wn))
            parts.append(g)
        if not parts:
            return {k: v.new_zeros((0,) + tuple(v.shape)) for k, v in params.items()}
        return {k: torch.cat([p[k] for p in parts]) for k in params}

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(self, params: Params, train: bool = False) -> dict[str, float | None]:
        """``test_loss`` and ``test_<metric>`` of ``params`` over every client's test rows (and,
        with ``train``, ``train_*`` over the training rows), the trainer's program's loss and
        metrics: :func:`fedopt.engine.evaluate.evaluate`."""
        return evaluation_row(self.trainer.fmodel, self.trainer.program, self.data, params, train)

    def _run(self, start: Params, stacked: bool, client_ids: np.ndarray, key: int | np.ndarray,
             weights: np.ndarray, optimizer: FunctionalOptimizer | None, keep_local: bool,
             correction: Params | None) -> RoundOutput:
        """The chunked loop of both entry points: ``start`` is one model (``stacked`` False,
        ``key`` the round) or one per job (``stacked`` True, ``key`` one per job)."""
        steps_all = local_step_counts(self.counts[client_ids], self.batch_size,
                                      self.local_steps, self.local_epochs)
        # rows of a memory-mapped data set (data.storage: mmap): queue every job's reads now
        read_ahead((self.data.x, self.data.y), self.offsets[client_ids],
                   self.offsets[client_ids + 1])
        delta_sum = {k: v.new_zeros(v.shape[1:] if stacked else v.shape) for k, v in start.items()}
        chunk = self._chunk(delta_sum)
        locals_: list[Params] = []
        local_losses: list[Tensor] = []
        loss_sum, samples = 0.0, 0
        w_all = torch.as_tensor(weights, dtype=next(iter(delta_sum.values())).dtype,
                                device=self.device)
        bad_pos: list[np.ndarray] = []      # positions of the non-finite jobs in the call
        bad_weight = 0.0
        batch_max = None                    # each job's largest minibatch (online programs)
        for lo in range(0, len(client_ids), chunk):
            ids = client_ids[lo:lo + chunk]
            key_c = key[lo:lo + chunk] if stacked else key
            plan = plan_batches(self.seed, key_c, ids, self.offsets, self.batch_size,
                                steps_all[lo:lo + chunk], device=self.device,
                                dtype=self.data.x.dtype)
            start_c = {k: v[lo:lo + chunk] for k, v in start.items()} if stacked else start
            corr = (None if correction is None
                    else {k: v[lo:lo + chunk] for k, v in correction.items()})
            res = self.trainer.train(start_c, self.data.x, self.data.y, plan, round_idx=key_c,
                                     client_ids=ids, optimizer=optimizer, correction=corr,
                                     stacked_start=stacked)
            w = w_all[lo:lo + chunk]
            ok = finite_rows(res.params, res.mean_loss)       # one reduction over the chunk
            wl = w.double() * res.mean_loss.double()
            loss_c, n_ok = torch.stack([wl.sum(), ok.sum().double()]).tolist()  # one sync
            if n_ok == len(ids):
                for k, y in res.params.items():
                    base = start_c[k] if stacked else start_c[k].unsqueeze(0)
                    delta_sum[k] += torch.tensordot(w, y - base, dims=1)
            else:   # leave the non-finite clients out (NaN · 0 is NaN: select, not weight)
                bad = (~ok).nonzero().flatten().cpu().numpy()
                bad_pos.append(lo + bad)
                bad_weight += float(np.sum(np.asarray(weights, dtype=np.float64)[lo + bad]))
                loss_c = float(torch.where(ok, wl, torch.zeros_like(wl)).sum())
                for k, y in res.params.items():
                    base = start_c[k] if stacked else start_c[k].unsqueeze(0)
                    mask = ok.view((-1,) + (1,) * (y.ndim - 1))
                    d = torch.where(mask, y - base, torch.zeros((), dtype=y.dtype,
                                                                device=y.device))
                    delta_sum[k] += torch.tensordot(w, d, dims=1)
            loss_sum += loss_c
            samples += res.samples
            if res.steps is not None:       # a program that chose its batches online
                steps_all = steps_all.copy() if batch_max is None else steps_all
                batch_max = (np.zeros(len(client_ids), dtype=np.int64) if batch_max is None
                             else batch_max)
                steps_all[lo:lo + len(ids)] = res.steps
                batch_max[lo:lo + len(ids)] = res.batch_size
            if keep_local:
                locals_.append(res.params)
                local_losses.append(res.mean_loss)
        local_params = ({k: torch.cat([p[k] for p in locals_]) for k in delta_sum}
                        if keep_local else None)
        local_loss = torch.cat(local_losses).double().cpu().numpy() if keep_local else None
        nonfinite = (np.concatenate(bad_pos).astype(np.int64) if bad_pos
                     else np.zeros(0, dtype=np.int64))
        weight_sum = float(np.sum(weights))
        if len(nonfinite) and self.on_nonfinite == "error":
            raise client_error(client_ids[nonfinite],
                               np.asarray(key)[nonfinite] if stacked
                               else np.full(len(nonfinite), key, dtype=np.int64))
        if len(nonfinite) and self.on_nonfinite == "drop":
            scale = drop_scale(weight_sum, weight_sum - bad_weight)
            delta_sum = {k: v * scale for k, v in delta_sum.items()}
            loss_sum *= scale
        return RoundOutput(delta_sum=delta_sum, weight_sum=weight_sum,
                           loss_sum=loss_sum, samples=samples,
                           updates=len(client_ids) - len(nonfinite),
                           local_params=local_params, steps=steps_all, local_loss=local_loss,
                           nonfinite=nonfinite, batch_size=batch_max)
