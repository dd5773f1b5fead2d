"""Per-client persistent state on the server (SCAFFOLD c_i, FedDyn/FedSpeed H_i), stacked.

federated.md §0 asks for server-side per-client storage "indexed by client id, initialised to
zeros, and persisted across rounds even for clients that are not sampled". A
:class:`ClientTable` keeps it as one stacked tensor per parameter, on the parameters' device,
**only for the clients that have state**:

    values[name]: [capacity, *shape]      rows 0..size-1 in use, in order of first storage
    slot:         int64 [N]               client id -> row, −1 = never stored (state is zero)
    p:            [N]                     population weights p_j (Σ_j p_j = 1), params' dtype
    mean[name]:   [*shape]                s̄ = Σ_{j=1..N} p_j s_j, kept up to date on every put

A client that has never been stored reads as zeros (``gather``), so a client sampled for the
first time starts from zero state. ``put`` assigns rows to new clients and grows the buffer by
doubling (capped at N), so a step costs O(m·d) for the m sampled clients; the population mean
s̄ — what SCAFFOLD's server control variate c and FedDyn's add-back mean_all(H) are — is updated
incrementally, s̄ ← s̄ + Σ_{i∈S} p_i (s_i⁺ − s_i), and never needs a pass over the table.

Memory trade-off: a dense [N, d] table costs N·d numbers from the first round; this one costs
(clients seen so far)·d, rounded up to the next power of two (at most 2× the seen count, never
more than N). With partial participation C the seen fraction after t rounds is about
1 − (1 − C)^t, so a long cross-silo run ends near N·d anyway (4.5 GB for 100 ResNet-18 clients,
fp32), while a cross-device run with 10^5 clients and a few thousand rounds stores only the
clients that actually took part. The int64 slot index costs 8·N bytes.

The table is plain data (a dict of tensors and an int) that lives in
``ServerState.clients`` and is checkpointed with it. Operations update it **in place**
(a second N·d copy per round would double the peak memory); a :class:`ServerState` that was
passed to ``run_round`` must not be reused — take ``copy()`` for a snapshot.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from fedopt import tree

Params = dict[str, Tensor]


def population_weights(counts: np.ndarray, aggregation_weights: str) -> np.ndarray:
    """p_j, the weight of client j in the global objective F = Σ_{j=1..N} p_j F_j (float64
    [N], Σ_j p_j = 1). The one place fedopt computes it.

    * ``"num_samples"`` (and ``"unbiased"``, which targets the same F): p_j = n_j / n with n_j
      client j's training samples and n = Σ_j n_j — empirical risk over all samples;
    * ``"uniform"``: p_j = 1/N — the plain mean over the N clients.

    Used as the population mean s̄ = Σ_j p_j s_j of SCAFFOLD's c and FedDyn's H (so their
    drift corrections are unbiased for F), as the importance p_i of the asynchronous family,
    and as FedAvg's "unbiased" weights w_i = (N/m) p_i over m uniformly sampled clients
    (E_S[Σ_{i∈S} w_i Δ_i] = Σ_j p_j Δ_j). Raises ValueError for another name.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if aggregation_weights == "uniform":
        return np.full(len(counts), 1.0 / len(counts))
    if aggregation_weights not in ("num_samples", "unbiased"):
        raise ValueError(f"population weights: 'num_samples', 'unbiased' or 'uniform', "
                         f"got {aggregation_weights!r}")
    return counts / counts.sum()


class ClientTable:
    """A view over the table dict (see the module docstring); ops mutate that dict."""

    def __init__(self, data: dict[str, Any]):
        self.data = data

    @classmethod
    def create(cls, like: Params, weights: np.ndarray, capacity: int = 0) -> "ClientTable":
        """An empty table for ``len(weights)`` clients shaped like ``like`` (on its device).

        ``capacity`` rows are reserved up front (0: allocate on the first ``put``)."""
        first = next(iter(like.values()))
        p = torch.as_tensor(np.asarray(weights, dtype=np.float64)).to(first.device, first.dtype)
        n = len(p)
        capacity = int(min(max(capacity, 0), n))
        return cls({
            "slot": torch.full((n,), -1, dtype=torch.int64, device=first.device),
            "size": 0,
            "p": p,
            "values": {k: v.new_zeros((capacity,) + tuple(v.shape)) for k, v in like.items()},
            "mean": {k: torch.zeros_like(v) for k, v in like.items()},
        })

    # -- facts -------------------------------------------------------------------------------
    @property
    def num_clients(self) -> int:
        return int(self.data["slot"].numel())

    @property
    def size(self) -> int:
        """Number of clients with stored state."""
        return int(self.data["size"])

    @property
    def capacity(self) -> int:
        return int(next(iter(self.data["values"].values())).shape[0])

    @property
    def mean(self) -> Params:
        """s̄ = Σ_j p_j s_j over all N clients (never-stored clients count as zero)."""
        return self.data["mean"]

    def stored_ids(self) -> np.ndarray:
        """Ids of the clients with stored state, in row order."""
        slot = self.data["slot"].cpu().numpy()
        ids = np.flatnonzero(slot >= 0)
        return ids[np.argsort(slot[ids])]

    def nbytes(self) -> int:
        """Bytes held by the stacked values (the dominant cost)."""
        return sum(v.numel() * v.element_size() for v in self.data["values"].values())

    # -- reads -------------------------------------------------------------------------------
    def _slots(self, ids: np.ndarray) -> Tensor:
        slot = self.data["slot"]
        return slot.index_select(0, torch.as_tensor(np.asarray(ids, dtype=np.int64),
                                                     device=slot.device))

    def gather(self, ids: np.ndarray) -> Params:
        """Stacked [m, ...] state of ``ids`` (zeros for clients never stored)."""
        s = self._slots(ids)
        have = s >= 0
        out = {}
        for k, buf in self.data["values"].items():
            if buf.shape[0] == 0:
                out[k] = buf.new_zeros((len(s),) + tuple(buf.shape[1:]))
                continue
            rows = buf.index_select(0, s.clamp_min(0))
            mask = have.view((-1,) + (1,) * (rows.ndim - 1))
            out[k] = torch.where(mask, rows, torch.zeros_like(rows))
        return out

    def dense(self) -> Params:
        """The full [N, ...] table (zeros for never-stored clients); for tests and analysis."""
        return self.gather(np.arange(self.num_clients))

    # -- writes ------------------------------------------------------------------------------
    def put(self, ids: np.ndarray, new: Params, old: Params | None = None) -> None:
        """s_i ← new_i for i in ``ids`` (distinct), keeping s̄ = Σ_j p_j s_j exact.

        ``old`` (the current values of ``ids``, as returned by :meth:`gather`) saves a read."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(np.unique(ids)) != len(ids):
            raise ValueError("ClientTable.put: client ids must be distinct")
        if old is None:
            old = self.gather(ids)
        s = self._assign(ids)
        p = self.data["p"].index_select(0, torch.as_tensor(ids, device=self.data["p"].device))
        for k, buf in self.data["values"].items():
            v = new[k].to(buf.dtype)
            buf.index_copy_(0, s, v)
            w = p.to(buf.dtype)
            self.data["mean"][k] += torch.tensordot(w, v - old[k], dims=1)

    def _assign(self, ids: np.ndarray) -> Tensor:
        """Rows for ``ids``, giving new clients the next free rows (growing the buffers)."""
        slot = self.data["slot"]
        s = self._slots(ids)
        fresh = (s < 0).nonzero().flatten()
        if fresh.numel():
            size = self.size
            need = size + int(fresh.numel())
            if need > self.capacity:
                self._grow(min(self.num_clients, max(need, 2 * self.capacity)))
            rows = torch.arange(size, need, dtype=torch.int64, device=slot.device)
            slot.index_copy_(0, torch.as_tensor(ids, device=slot.device)[fresh], rows)
            s = s.clone()
            s[fresh] = rows
            self.data["size"] = need
        return s

    def _grow(self, capacity: int) -> None:
        vals = self.data["values"]
        for k, buf in vals.items():
            bigger = buf.new_zeros((capacity,) + tuple(buf.shape[1:]))
            bigger[: buf.shape[0]] = buf
            vals[k] = bigger

    def copy(self) -> "ClientTable":
        """A deep copy (a snapshot that later in-place puts do not touch)."""
        return ClientTable(tree.clone(self.data))
