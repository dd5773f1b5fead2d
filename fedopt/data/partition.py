"""Partitions: which client owns each row, as pure functions of the labels and a numpy Generator.

Every partition returns ``client``: an int64 array with one entry per row, ``client[r] ∈ 0..K-1``.
So each row belongs to exactly one client by construction; every partition also guarantees that
no client is empty (it needs ``n >= K`` rows, ``n >= K * shards_per_client`` for ``shards``).

* ``iid``: a uniformly random permutation cut into ``K`` contiguous pieces of ``⌊n/K⌋`` or
  ``⌈n/K⌉`` rows.
* ``dirichlet(alpha)``: label skew (Hsu et al. 2019). For each class ``c`` independently draw
  proportions ``q_c ~ Dir(alpha · 1_K)`` and deal the ``n_c`` rows of class ``c`` to clients by
  ``Multinomial(n_c, q_c)``. Small ``alpha`` gives clients few classes, large ``alpha`` tends to
  iid. Clients left empty then receive one row each from the currently largest client, which
  keeps the skew (a repaired client holds a single class) and never loops.
* ``shards(shards_per_client=s)``: pathological non-iid (McMahan et al. 2017): sort rows by label
  (ties in random order), cut the sorted list into ``K·s`` contiguous shards of near-equal size
  and give each client ``s`` random shards. A shard no longer than the smallest class spans at
  most two labels, so each client sees at most ``2s`` labels (exactly ``≤ s`` when every class
  size is a multiple of the shard size).
* ``power_law(sigma)``: quantity skew with iid labels: weights ``ω_i ~ LogNormal(0, sigma)``,
  sizes ``n_i = 1 + Multinomial(n − K, ω / Σω)``, rows dealt from a random permutation.
"""
from __future__ import annotations

import heapq
from typing import Any, Callable

import numpy as np
from pydantic import Field

from fedopt.data.checks import positive_int, real
from fedopt.schema import (ConfigError, NonNegativeFloat, PositiveFloat, PositiveInt, Schema,
                           defaults_table, named_union, parse, variant)

Partition = Callable[..., np.ndarray]


class PartitionConfig(Schema):
    """A ``data.partition`` section: which client owns each row."""
    what = "partition"


#: the partitions' schemas (``name`` and its keys)
PARTITION_SCHEMAS = [
    variant(PartitionConfig, "iid"),
    variant(PartitionConfig, "dirichlet",
            alpha=(PositiveFloat, Field(0.5, description="Dirichlet concentration α"))),
    variant(PartitionConfig, "shards",
            shards_per_client=(PositiveInt, Field(2, description="shards s per client"))),
    variant(PartitionConfig, "power_law",
            sigma=(NonNegativeFloat, Field(1.0, description="log-normal σ of client weights"))),
]
IidPartition = PARTITION_SCHEMAS[0]
#: a partition spec: its name alone, or ``{name: ..., key: value}`` (default ``iid``)
PartitionSpec = named_union(PARTITION_SCHEMAS, default="iid")

#: accepted keys (besides ``name``) and their defaults, per partition.
PARTITION_KEYS: dict[str, dict[str, Any]] = defaults_table(PARTITION_SCHEMAS)


def _check_sizes(labels: np.ndarray, num_clients: int, needed: int | None = None) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    num_clients = positive_int(num_clients, "data.num_clients")
    _require_rows(labels.shape[0], num_clients, num_clients if needed is None else needed)
    return labels


def _require_rows(num_rows: int, num_clients: int, needed: int) -> None:
    if num_rows < needed:
        raise ConfigError(f"data.num_clients: cannot give {num_clients} clients at least one row "
                          f"each from {num_rows} rows (need at least {needed} rows)")


def _deal(order: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Rows ``order[start_i : start_i + sizes[i]]`` go to client ``i``."""
    client = np.empty(order.shape[0], dtype=np.int64)
    client[order] = np.repeat(np.arange(sizes.shape[0], dtype=np.int64), sizes)
    return client


def _even_sizes(n: int, parts: int) -> np.ndarray:
    """``parts`` sizes of ``⌊n/parts⌋`` or ``⌈n/parts⌉`` summing to ``n`` (larger ones first)."""
    sizes = np.full(parts, n // parts, dtype=np.int64)
    sizes[: n % parts] += 1
    return sizes


def iid(labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> np.ndarray:
    """Equal-ish random shards: a random permutation cut into ``K`` pieces."""
    labels = _check_sizes(labels, num_clients)
    n = labels.shape[0]
    return _deal(rng.permutation(n), _even_sizes(n, num_clients))


def dirichlet(labels: np.ndarray, num_clients: int, rng: np.random.Generator,
              alpha: float = 0.5) -> np.ndarray:
    """Label skew: per class ``c``, ``q_c ~ Dir(alpha·1_K)``, rows dealt by ``Multinomial(n_c, q_c)``."""
    labels = _check_sizes(labels, num_clients)
    alpha = real(alpha, "data.partition.alpha", low=0.0, low_open=True)
    k, n = num_clients, labels.shape[0]
    client = np.empty(n, dtype=np.int64)
    classes = np.unique(labels)
    for c in classes:  # one cheap vectorized step per class
        rows = np.flatnonzero(labels == c)
        rows = rows[rng.permutation(rows.shape[0])]
        q = _dirichlet(rng, alpha, k)
        sizes = rng.multinomial(rows.shape[0], q)
        client[rows] = np.repeat(np.arange(k, dtype=np.int64), sizes)
    return _fill_empty(client, k, rng)


def _dirichlet(rng: np.random.Generator, alpha: float, k: int) -> np.ndarray:
    """``Dir(alpha·1_k)`` via normalised Gamma draws, robust for tiny ``alpha`` (where all
    Gamma draws can underflow to 0: then one uniformly random client takes the class)."""
    g = rng.standard_gamma(alpha, size=k)
    total = g.sum()
    if not total > 0:
        g = np.zeros(k)
        g[rng.integers(k)] = 1.0
        total = 1.0
    q = g / total
    return q / q.sum()


def _fill_empty(client: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Give every empty client one row taken from the currently largest client."""
    counts = np.bincount(client, minlength=k)
    empty = np.flatnonzero(counts == 0)
    if empty.size == 0:
        return client
    # rows grouped by client, in random order inside each group; donors give from the group's end
    order = np.argsort(client + 0.5 * rng.random(client.shape[0]))
    ends = np.cumsum(counts)
    given = np.zeros(k, dtype=np.int64)
    heap = [(-int(counts[i]), int(i)) for i in np.flatnonzero(counts > 1)]
    heapq.heapify(heap)
    client = client.copy()
    for e in empty:
        neg, d = heapq.heappop(heap)  # largest client; it has > 1 row, so stays non-empty
        row = order[ends[d] - 1 - given[d]]
        given[d] += 1
        client[row] = e
        if -neg - 1 > 1:
            heapq.heappush(heap, (neg + 1, d))
    return client


def shards(labels: np.ndarray, num_clients: int, rng: np.random.Generator,
           shards_per_client: int = 2) -> np.ndarray:
    """Pathological non-iid: label-sorted rows cut into ``K·s`` shards, ``s`` random shards each."""
    s = shards_per_client
    s = positive_int(s, "data.partition.shards_per_client")
    labels = _check_sizes(labels, num_clients, needed=num_clients * s)
    n = labels.shape[0]
    perm = rng.permutation(n)
    order = perm[np.argsort(labels[perm], kind="stable")]  # sorted by label, ties random
    shard_of_pos = np.repeat(np.arange(num_clients * s), _even_sizes(n, num_clients * s))
    owner = np.empty(num_clients * s, dtype=np.int64)
    owner[rng.permutation(num_clients * s)] = np.repeat(np.arange(num_clients), s)
    client = np.empty(n, dtype=np.int64)
    client[order] = owner[shard_of_pos]
    return client


def power_law(labels: np.ndarray, num_clients: int, rng: np.random.Generator,
              sigma: float = 1.0) -> np.ndarray:
    """Quantity skew: ``n_i = 1 + Multinomial(n − K, ω/Σω)``, ``ω_i ~ LogNormal(0, sigma)``."""
    labels = _check_sizes(labels, num_clients)
    sigma = real(sigma, "data.partition.sigma", low=0.0)
    n, k = labels.shape[0], num_clients
    w = rng.lognormal(0.0, float(sigma), size=k)
    sizes = 1 + rng.multinomial(n - k, w / w.sum())
    return _deal(rng.permutation(n), sizes)


PARTITIONS: dict[str, Partition] = {
    "iid": iid,
    "dirichlet": dirichlet,
    "shards": shards,
    "power_law": power_law,
}


def resolve_partition(spec: str | dict | None, prefix: str = "data.partition") -> dict[str, Any]:
    """Normalise a partition spec (``None``, a name, or ``{name: ..., key: value}``) to a full
    dict with defaults filled and values checked by its schema (``alpha`` a finite number > 0,
    ``sigma`` a finite number >= 0, ``shards_per_client`` a positive integer); unknown
    names/keys and bad values raise ConfigError naming ``<prefix>.<key>``. Needs no data: the
    config validator calls it."""
    return parse(PartitionSpec, spec, prefix).model_dump()


def required_rows(spec: dict[str, Any], num_clients: int) -> int:
    """Rows a resolved partition spec needs so that no client is empty: ``K``, or
    ``K · shards_per_client`` for ``shards``."""
    return num_clients * (spec["shards_per_client"] if spec["name"] == "shards" else 1)


def check_partition_rows(spec: dict[str, Any], num_rows: int, num_clients: int) -> None:
    """ValueError naming ``data.num_clients`` when ``num_rows`` rows cannot give every one of
    ``num_clients`` clients a row under the resolved partition ``spec`` (the check the
    partition functions make, without the labels)."""
    _require_rows(num_rows, num_clients, required_rows(spec, num_clients))


def partition(labels: np.ndarray, num_clients: int, spec: str | dict | None,
              rng: np.random.Generator) -> np.ndarray:
    """Client index per row for a partition spec such as ``{"name": "dirichlet", "alpha": 0.5}``."""
    full = resolve_partition(spec)
    kwargs = {k: v for k, v in full.items() if k != "name"}
    return PARTITIONS[full["name"]](np.asarray(labels), num_clients, rng, **kwargs)
