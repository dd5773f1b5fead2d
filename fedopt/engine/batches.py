"""Which rows each client trains on at each local step: a vectorized, executor-independent plan.

Client i (with n_i rows, batch size B) walks through its data in epochs: each epoch is a fresh
random permutation of its n_i rows cut into s_i = ⌈n_i / B⌉ minibatches, the last one partial
(``drop_last=False``, as in the FedAvg paper). Local step k (0-based) uses minibatch
b = k mod s_i of epoch e = ⌊k / s_i⌋. The permutation of (round, client, epoch) comes from keyed
randomness (:mod:`fedopt.rng`), so it does not depend on the other clients in the batch.

``local_steps`` mode runs K steps per client; ``local_epochs`` mode runs u_i = E·s_i steps
(clients with more data take more steps). Finished clients are masked out of later steps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from fedopt.memory import available_memory_bytes
from fedopt.rng import STREAM_BATCHES, keyed_bits, keyed_bits_torch, shr_logical


@dataclass
class BatchPlan:
    """Row indices for every (step, client, slot) of one chunk of clients in one round.

    rows:   [K_max, C, B] int64 global row indices into the dataset (padding slots repeat a
            valid row and get weight 0)
    weight: [K_max, C, B] float, 1 for real samples, 0 for padding (partial last batches)
    active: [K_max, C] bool, client still has local steps left at that step
    steps:  [C] int64, u_i = number of local steps of each client
    """

    rows: torch.Tensor
    weight: torch.Tensor
    active: torch.Tensor
    steps: torch.Tensor
    #: what the plan was drawn from (:func:`plan_batches` sets it): lets a local program that
    #: chooses its batches online (:class:`BatchStream`) draw the same keyed permutations
    source: "PlanSource | None" = None

    @property
    def max_steps(self) -> int:
        return self.rows.shape[0]

    def samples(self) -> int:
        """Number of real (non-padding) samples processed."""
        return int(self.weight.sum().item())


def capped_batch_size(batch_size: int, counts: np.ndarray) -> int:
    """``min(B, max_i n_i)``: a batch larger than every client's data only adds padding slots.

    With ``B >= n_i`` every client takes its whole data set as one minibatch per step
    (``s_i = 1``), so for any ``B >= max_i n_i`` the plan's real slots are the same; capping at
    ``max_i n_i`` removes only padding and makes the plan identical to that of ``B = max_i n_i``.
    ``counts`` must be those of the whole federation (a shard's would give another width, and
    so other floating-point sums, than the in-process run). ValueError for a non-positive B
    (naming ``client.batch_size``) or an empty ``counts``.
    """
    b = int(batch_size)
    if b < 1:
        raise ValueError(f"client.batch_size must be a positive integer, got {batch_size!r}")
    counts = np.asarray(counts)
    if counts.size == 0:
        raise ValueError("capped_batch_size: counts is empty (no clients)")
    return min(b, max(int(counts.max()), 1))


#: bytes per ``(step, client, slot)`` entry while :func:`plan_batches` builds a plan (int64
#: positions, indices and rows, float64 and float32 weights, boolean masks, with temporaries)
PLAN_BYTES_PER_SLOT = 48


def plan_bytes(max_steps: int, clients: int, batch_size: int) -> int:
    """Peak bytes :func:`plan_batches` needs for ``[max_steps, clients, batch_size]`` slots."""
    return PLAN_BYTES_PER_SLOT * int(max_steps) * int(clients) * int(batch_size)


def local_step_counts(counts: np.ndarray, batch_size: int, local_steps: int | None,
                      local_epochs: int | None) -> np.ndarray:
    """u_i = K (steps mode) or E·⌈n_i/B⌉ (epochs mode)."""
    if (local_steps is None) == (local_epochs is None):
        raise ValueError("give exactly one of local_steps and local_epochs")
    if local_steps is not None:
        return np.full(len(counts), int(local_steps), dtype=np.int64)
    return int(local_epochs) * -(-counts.astype(np.int64) // batch_size)


def plan_batches(seed: int, round_idx: int | np.ndarray, client_ids: np.ndarray,
                 offsets: np.ndarray, batch_size: int, steps: np.ndarray,
                 device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> BatchPlan:
    """Build the :class:`BatchPlan` for ``client_ids`` (global ids) with ``steps`` each.

    ``round_idx`` is the key of the minibatch permutations: one int for every client, or an
    array of one key per client (client i's batches are then those of ``plan_batches`` with
    ``round_idx = round_idx[i]``, bit for bit). Raises ValueError naming ``client.batch_size``
    when the plan (:func:`plan_bytes`) would not fit in free memory, before allocating it.
    """
    client_ids = np.asarray(client_ids, dtype=np.int64)
    per_client_key = np.ndim(round_idx) > 0
    if per_client_key:
        round_idx = np.asarray(round_idx, dtype=np.int64)
        if round_idx.shape != client_ids.shape:
            raise ValueError(f"round_idx: one key per client expected, got shape "
                             f"{round_idx.shape} for {client_ids.shape} clients")
    n = (offsets[client_ids + 1] - offsets[client_ids]).astype(np.int64)
    if np.any(n <= 0):
        raise ValueError(f"clients without training rows: {client_ids[n <= 0].tolist()[:10]}")
    C, B = len(client_ids), int(batch_size)
    steps = np.asarray(steps).astype(np.int64)
    first_row = offsets[client_ids].astype(np.int64)
    K = int(steps.max()) if C else 0
    need = plan_bytes(K, C, B)
    device = torch.device(device)
    if need > _free_memory(device):
        raise ValueError(f"client.batch_size: a minibatch plan of {K} local steps x {C} clients "
                         f"x batch {B} needs {need / 2**30:.1f} GiB, more than the free memory; "
                         f"lower client.batch_size (above the largest client's rows it only "
                         f"pads, see capped_batch_size), the local steps or executor.chunk_size")
    per_epoch = -(-n // B)                                     # s_i
    epochs = np.maximum(-(-steps // per_epoch), 1)             # epochs each client starts
    # on CUDA the plan is made where it is used; elsewhere (CPU, and devices such as MPS that
    # lack float64 or where the torch path is not checked) by numpy on the host, then copied
    make = _plan_torch if device.type == "cuda" else _plan_numpy
    rows, weight, active = make(seed, round_idx if per_client_key else int(round_idx),
                                client_ids, first_row, n, per_epoch, epochs, steps, K, B,
                                device)
    return BatchPlan(
        rows=rows, weight=weight.to(device=device, dtype=dtype), active=active,
        steps=torch.from_numpy(steps).to(device),
        source=PlanSource(seed=int(seed), keys=round_idx, client_ids=client_ids,
                          first_row=first_row, counts=n, batch_size=B, steps=steps),
    )


def _plan_numpy(seed: int, key: int | np.ndarray, client_ids: np.ndarray, first_row: np.ndarray,
                n: np.ndarray, per_epoch: np.ndarray, epochs: np.ndarray, steps: np.ndarray,
                K: int, B: int, device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The plan's ``rows`` [K, C, B], 0/1 ``weight`` (float64) and ``active`` [K, C] made with
    numpy on the host, ``rows`` and ``active`` copied to ``device`` (the path of
    :func:`plan_batches` off CUDA; ``weight`` stays on the host: the caller casts and moves it
    in one call, as a device without float64, e.g. MPS, cannot hold it)."""
    C = len(client_ids)
    # One flat permutation segment of length n_i per (client, epoch), sorted by random keys.
    seg_client = np.repeat(np.arange(C), epochs)
    seg_epoch = np.arange(len(seg_client)) - np.repeat(np.cumsum(epochs) - epochs, epochs)
    seg_len = n[seg_client]
    seg_start = np.cumsum(seg_len) - seg_len
    total = int(seg_len.sum())
    seg_of = np.repeat(np.arange(len(seg_len)), seg_len)
    within = np.arange(total) - seg_start[seg_of]
    seg_key = key[seg_client][seg_of] if np.ndim(key) > 0 else key
    bits = keyed_bits(seed, STREAM_BATCHES, seg_key, client_ids[seg_client][seg_of],
                      seg_epoch[seg_of], within)
    # sort by (segment, top 32 random bits) as one exact integer key; stable, so the rare equal
    # keys keep their within-segment order: the permutation never depends on the chunk
    composite = (seg_of.astype(np.uint64) << np.uint64(32)) | (bits >> np.uint64(32))
    order = np.argsort(composite, kind="stable")
    perm = within[order]                                       # local row index, per segment
    first_seg = np.cumsum(epochs) - epochs                     # segment index of epoch 0

    k = np.arange(K)[:, None]                                  # [K, 1]
    epoch = k // per_epoch[None, :]                            # [K, C]
    batch = k % per_epoch[None, :]
    pos = batch[..., None] * B + np.arange(B)[None, None, :]   # [K, C, B] position in epoch
    valid = pos < n[None, :, None]
    active = k < steps[None, :]
    seg = first_seg[None, :] + np.minimum(epoch, epochs[None, :] - 1)
    flat = seg_start[seg][..., None] + np.minimum(pos, n[None, :, None] - 1)
    rows = first_row[None, :, None] + perm[flat]
    weight = (valid & active[..., None]).astype(np.float64)
    return (torch.from_numpy(rows).to(device), torch.from_numpy(weight),
            torch.from_numpy(active).to(device))


def _plan_torch(seed: int, key: int | np.ndarray, client_ids: np.ndarray, first_row: np.ndarray,
                n: np.ndarray, per_epoch: np.ndarray, epochs: np.ndarray, steps: np.ndarray,
                K: int, B: int, device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_plan_numpy`'s arrays computed by torch on ``device`` (a GPU run's plan is made
    where it is used: only the C-sized inputs cross the bus). Every step is the numpy path's in
    exact integer arithmetic (:func:`fedopt.rng.keyed_bits_torch`, a stable sort of the same
    composite keys), so the plan is the same bit for bit; sizes known on the host are passed
    as ``output_size`` so that nothing waits for the device."""
    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(device)

    C = len(client_ids)
    n_t, ep_t, pe_t, steps_t = t(n), t(epochs), t(per_epoch), t(steps)
    num_seg, total = int(epochs.sum()), int((n * epochs).sum())
    seg_client = torch.repeat_interleave(torch.arange(C, device=device), ep_t,
                                         output_size=num_seg)
    first_seg = torch.cumsum(ep_t, 0) - ep_t                   # segment index of epoch 0
    seg_epoch = (torch.arange(num_seg, device=device)
                 - torch.repeat_interleave(first_seg, ep_t, output_size=num_seg))
    seg_len = n_t[seg_client]
    seg_start = torch.cumsum(seg_len, 0) - seg_len
    seg_of = torch.repeat_interleave(torch.arange(num_seg, device=device), seg_len,
                                     output_size=total)
    within = torch.arange(total, device=device) - seg_start[seg_of]
    seg_key = t(key)[seg_client][seg_of] if np.ndim(key) > 0 else int(key)
    bits = keyed_bits_torch(seed, STREAM_BATCHES, seg_key, t(client_ids)[seg_client][seg_of],
                            seg_epoch[seg_of], within, device=device)
    composite = (seg_of << 32) | shr_logical(bits, 32)         # < 2^63: signed order = unsigned
    perm = within[torch.sort(composite, stable=True).indices]

    k = torch.arange(K, device=device)[:, None]
    epoch = k // pe_t[None, :]
    batch = k % pe_t[None, :]
    pos = batch[..., None] * B + torch.arange(B, device=device)[None, None, :]
    valid = pos < n_t[None, :, None]
    active = k < steps_t[None, :]
    seg = first_seg[None, :] + torch.minimum(epoch, ep_t[None, :] - 1)
    flat = seg_start[seg][..., None] + torch.minimum(pos, n_t[None, :, None] - 1)
    rows = t(first_row)[None, :, None] + perm[flat]
    weight = (valid & active[..., None]).to(torch.float64)
    return rows, weight, active


@dataclass(frozen=True)
class PlanSource:
    """The inputs of a :func:`plan_batches` plan (C clients): ``seed``, ``keys`` (one int or
    int64 [C]), global ``client_ids`` [C], each client's ``first_row`` and row ``counts`` n_i
    [C], the batch size B and the local step counts u_i [C]."""

    seed: int
    keys: int | np.ndarray
    client_ids: np.ndarray
    first_row: np.ndarray
    counts: np.ndarray
    batch_size: int
    steps: np.ndarray

    def key(self, i: int) -> int:
        """Client i's permutation key (the round, or its own job key)."""
        return int(self.keys[i]) if np.ndim(self.keys) > 0 else int(self.keys)

    def sample_budget(self) -> np.ndarray:
        """int64 [C]: real samples of the fixed plan, ⌊u_i/s_i⌋·n_i + (u_i mod s_i)·B with
        s_i = ⌈n_i/B⌉ (what a client of an online plan processes before it stops)."""
        per_epoch = -(-self.counts // self.batch_size)
        return (self.steps // per_epoch) * self.counts + (self.steps % per_epoch) * self.batch_size


def pass_permutation(seed: int, key: int, client_id: int, epoch: int,
                     rows: np.ndarray) -> np.ndarray:
    """The local row ids ``rows`` (int64, any subset of 0..n_i−1) in the keyed order of pass
    ``epoch``: sorted by the top 32 bits of ``keyed_bits(seed, STREAM_BATCHES, key, client,
    epoch, row)``, ties in ascending row order. For ``rows = arange(n_i)`` this is exactly the
    epoch permutation :func:`plan_batches` uses."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    bits = keyed_bits(seed, STREAM_BATCHES, key, client_id, epoch, rows) >> np.uint64(32)
    return rows[np.argsort(bits, kind="stable")]


#: ``pass_rows(i, epoch, step) -> local row ids`` of client i's next pass (a curriculum's
#: paced prefix); None: every row
PassRows = Callable[[int, int, int], np.ndarray]


class BatchStream:
    """Minibatches chosen online, one local step at a time, for C clients whose batch sizes
    b_i may change between steps (adaptive batch sizes) and whose passes may cover a subset of
    their rows (curricula).

    Client i walks through passes: pass e is the rows ``pass_rows(i, e, step)`` (all n_i rows
    by default) in the keyed order :func:`pass_permutation`; a step takes the next
    min(b_i, rows left in the pass, samples left in the budget) of them (a pass's last batch
    may be partial, ``drop_last=False``); a client stops when it has processed its budget
    (:meth:`PlanSource.sample_budget`, the fixed plan's samples). With every b_i = B and all
    rows, the batches are those of :func:`plan_batches`, bit for bit, step for step.
    """

    def __init__(self, source: PlanSource, pass_rows: PassRows | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.source, self.pass_rows = source, pass_rows
        self.device, self.dtype = device, dtype
        C = len(source.client_ids)
        self.budget = source.sample_budget()
        self.samples = np.zeros(C, dtype=np.int64)
        self.epoch = np.zeros(C, dtype=np.int64)
        self.pos = np.zeros(C, dtype=np.int64)
        self.step = 0
        self._pass: list[np.ndarray | None] = [None] * C

    @property
    def active(self) -> np.ndarray:
        """bool [C]: clients with samples left in their budget."""
        return self.samples < self.budget

    def _current(self, i: int) -> np.ndarray:
        if self._pass[i] is None or self.pos[i] >= len(self._pass[i]):
            if self._pass[i] is not None:
                self.epoch[i] += 1
                self.pos[i] = 0
            src = self.source
            rows = (np.arange(src.counts[i]) if self.pass_rows is None
                    else self.pass_rows(i, int(self.epoch[i]), self.step))
            self._pass[i] = pass_permutation(src.seed, src.key(i), int(src.client_ids[i]),
                                             int(self.epoch[i]), rows)
        return self._pass[i]

    def next(self, batch_sizes: np.ndarray, width: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                 np.ndarray]:
        """The next step's global ``rows`` int64 [C, width] and ``weight`` [C, width] (1 for
        real rows; padding repeats a real row with weight 0; finished clients get weight 0
        only) and the real rows taken per client, int64 [C]. ``width`` must be ≥ every active
        client's b_i (the trainer pads to the largest b_i so that a constant B gives the fixed
        plan's shapes)."""
        C = len(self.source.client_ids)
        rows = np.zeros((C, width), dtype=np.int64)
        weight = np.zeros((C, width), dtype=np.float64)
        take = np.zeros(C, dtype=np.int64)
        act = self.active
        for i in range(C):
            if not act[i]:
                rows[i] = self.source.first_row[i]
                continue
            perm = self._current(i)
            p = int(self.pos[i])
            t = int(min(batch_sizes[i], len(perm) - p, self.budget[i] - self.samples[i]))
            if t > width:
                raise ValueError(f"BatchStream.next: width {width} < batch {t} of client {i}")
            local = perm[p:p + t]
            rows[i, :t] = local
            rows[i, t:] = local[-1]
            weight[i, :t] = 1.0
            rows[i] += self.source.first_row[i]
            take[i] = t
            self.pos[i] += t
            self.samples[i] += t
        self.step += 1
        return (torch.from_numpy(rows).to(self.device),
                torch.from_numpy(weight).to(device=self.device, dtype=self.dtype), take)


def _free_memory(device: torch.device) -> int:
    """Free bytes where the plan is built: the GPU's for the CUDA path, else the host's."""
    return available_memory_bytes(device if device.type == "cuda" else torch.device("cpu"))
