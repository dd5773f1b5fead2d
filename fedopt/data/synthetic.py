"""Synthetic(α, β) of FedProx (Li et al., MLSys 2020, after Shamir et al. 2014).

For client ``k`` (``d`` features, ``C`` classes; here ``N(μ, s)`` means mean ``μ`` and standard
deviation ``s``, as in the FedProx reference generator's ``numpy.random.normal(loc, scale)``;
for ``α = β = 1`` this agrees with reading ``s`` as a variance):

    u_k ~ N(0, α),  B_k ~ N(0, β)
    W_k ∈ R^{C×d}, b_k ∈ R^C  with entries ~ N(u_k, 1)
    v_k ∈ R^d                 with entries ~ N(B_k, 1)
    x ~ N(v_k, Σ),  Σ = diag(j^{-1.2}), j = 1..d
    y = argmax_c softmax(W_k x + b_k)_c = argmax_c (W_k x + b_k)_c

α controls how much the local models differ, β how much the local feature means differ.
Synthetic-IID (``iid=True``): every client shares one ``W, b ~ N(0, 1)`` and ``v_k = 0``.

Client sizes follow the LEAF/FedProx power law, ``r_k = ⌊LogNormal(4, 2)⌋ + min_samples``, here
capped at ``max_samples`` (default 1000; the uncapped tail reaches 10^5 rows and 10,000 uncapped
clients would not fit in memory; with the defaults the mean is ≈ 240 rows, so 10,000 clients are
≈ 2.4 M rows, ≈ 0.6 GB of float32 features). Each client's rows are then split
``test_fraction`` to test (FedProx used 90/10; default here 80/20).

Labels are computed in float64 from the stored float32 features, so
``y == argmax(W_k x + b_k)`` holds exactly for the returned tensors.

Populations larger than memory: ``storage: mmap`` writes the arrays to a store on disk
(``cache_dir``, :mod:`fedopt.data.store`) and the tensors are memory-mapped views of it, with
the same numbers; building then holds one chunk of clients in memory, never ``W [K, C, d]``
(:class:`ModelStream`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import torch
from pydantic import Field, model_validator

from fedopt.data.assemble import split_counts
from fedopt.data.checks import TestFraction, seed_streams
from fedopt.data.dataset import FederatedDataset
from fedopt.data.store import (CACHE_DIR_FIELD, STORAGE_FIELD, CacheDir, Column, Destination,
                               MemoryDestination, Storage, as_tensors, build_stored, check_store,
                               disk_free_bytes, store_path, store_request)
from fedopt.memory import available_memory_bytes
from fedopt.schema import (Bool, ConfigError, Float, NonNegativeFloat, PositiveInt, Schema, fail,
                           parse)


class SyntheticData(Schema):
    """``data: {name: synthetic, ...}``: FedProx's Synthetic(α, β) (see the module docstring)."""

    what = "data set 'synthetic'"
    name: Literal["synthetic"] = "synthetic"
    alpha: NonNegativeFloat = Field(1.0, description="α: how much the local models differ")
    beta: NonNegativeFloat = Field(1.0, description="β: how much the local feature means differ")
    num_clients: PositiveInt = 100
    iid: Bool = Field(False, description="Synthetic-IID: one shared model, v_k = 0")
    num_features: PositiveInt = 60
    num_classes: PositiveInt = 10
    test_fraction: TestFraction = 0.2
    min_samples: PositiveInt = 50
    max_samples: Optional[PositiveInt] = Field(1000, description="null: uncapped")
    lognormal_mean: Float = 4.0
    lognormal_sigma: NonNegativeFloat = 2.0
    storage: Storage = STORAGE_FIELD
    cache_dir: CacheDir = CACHE_DIR_FIELD

    @model_validator(mode="after")
    def _sizes(self) -> "SyntheticData":
        if self.max_samples is not None and self.max_samples < self.min_samples:
            raise fail("max_samples", f"must be >= data.min_samples ({self.min_samples}), "
                                      f"got {self.max_samples}")
        if self.cache_dir is not None and self.storage != "mmap":
            raise fail("cache_dir", "read only with data.storage: mmap")
        return self


@dataclass(frozen=True)
class SyntheticModel:
    """The generating parameters: ``W [K, C, d]``, ``b [K, C]``, ``v [K, d]``, ``cov_diag [d]``
    (``Σ_jj = j^{-1.2}``), and ``u``, ``B`` ``[K]`` (zeros for the iid variant)."""

    W: np.ndarray
    b: np.ndarray
    v: np.ndarray
    cov_diag: np.ndarray
    u: np.ndarray
    B: np.ndarray


def draw_model(rng: np.random.Generator, num_clients: int, alpha: float, beta: float,
               iid: bool, num_features: int, num_classes: int) -> SyntheticModel:
    """Draw ``(W_k, b_k, v_k)`` for all clients at once (vectorized)."""
    k, d, c = num_clients, num_features, num_classes
    cov_diag = np.arange(1, d + 1, dtype=np.float64) ** -1.2
    if iid:
        W = np.broadcast_to(rng.normal(0.0, 1.0, size=(c, d)), (k, c, d))
        b = np.broadcast_to(rng.normal(0.0, 1.0, size=c), (k, c))
        zeros = np.zeros(k)
        return SyntheticModel(W, b, np.zeros((k, d)), cov_diag, zeros, zeros)
    u = rng.normal(0.0, alpha, size=k)
    B = rng.normal(0.0, beta, size=k)
    W = rng.normal(u[:, None, None], 1.0, size=(k, c, d))
    b = rng.normal(u[:, None], 1.0, size=(k, c))
    v = rng.normal(B[:, None], 1.0, size=(k, d))
    return SyntheticModel(W, b, v, cov_diag, u, B)


def draw_sizes(rng: np.random.Generator, num_clients: int, min_samples: int,
               max_samples: int | None, lognormal_mean: float = 4.0,
               lognormal_sigma: float = 2.0) -> np.ndarray:
    """``r_k = min(⌊LogNormal(mean, sigma)⌋ + min_samples, max_samples)`` rows per client."""
    r = np.floor(rng.lognormal(lognormal_mean, lognormal_sigma, size=num_clients))
    r = np.minimum(r, np.iinfo(np.int64).max // 4).astype(np.int64) + min_samples
    return r if max_samples is None else np.minimum(r, max_samples)


def check_synthetic(*, alpha: float = 1.0, beta: float = 1.0, num_clients: int = 100,
                    iid: bool = False, num_features: int = 60, num_classes: int = 10,
                    test_fraction: float = 0.2, min_samples: int = 50,
                    max_samples: int | None = 1000, lognormal_mean: float = 4.0,
                    lognormal_sigma: float = 2.0, storage: str = "memory",
                    cache_dir: str | None = None) -> dict:
    """The keys of :func:`synthetic_with_model`, checked by :class:`SyntheticData` and
    normalised without drawing any data (the config validator runs the same schema).
    ConfigError naming ``data.<key>``: α, β and the log-normal σ must be finite and >= 0,
    counts positive integers, ``test_fraction`` in [0, 1), ``max_samples >= min_samples``,
    ``storage`` memory or mmap, ``cache_dir`` only with mmap."""
    keys = {"alpha": alpha, "beta": beta, "num_clients": num_clients, "iid": iid,
            "num_features": num_features, "num_classes": num_classes,
            "test_fraction": test_fraction, "min_samples": min_samples,
            "max_samples": max_samples, "lognormal_mean": lognormal_mean,
            "lognormal_sigma": lognormal_sigma, "storage": storage, "cache_dir": cache_dir}
    return parse(SyntheticData, keys, "data").model_dump(exclude={"name"})


#: rows drawn at once while streaming Synthetic into its final arrays (≈ 60 MB of float32
#: features at d = 60)
BUILD_CHUNK_ROWS = 1 << 18
#: bytes of generating parameters (float64 ``W_k, b_k, v_k``) drawn at once: a chunk holds at
#: most this many bytes of them (and at least one client)
MODEL_CHUNK_BYTES = 1 << 26
#: the version of the builder's numbers recorded in a data store (bump when they change)
STORE_VERSION = 1


class ModelStream:
    """The generating parameters of consecutive clients, drawn a chunk of clients at a time
    with the numbers of :func:`draw_model` (the same generator, values in the same order).

    ``Generator.normal`` called on consecutive pieces of an array draws what one call over the
    whole array draws (the sampler takes its values from the bit stream one after another;
    ``tests/data/test_data_store.py`` checks it), but :func:`draw_model` draws all ``W``, then
    all ``b``, then all ``v``: so three copies of the generator are positioned at the three
    sections, by drawing (and discarding) ``W`` and ``b`` once in chunks of
    :data:`MODEL_CHUNK_BYTES`. Memory: ``u``, ``B`` ``[K]`` and one chunk, not ``W [K, C, d]``
    (4.8 GB of float64 at 10^6 clients with the defaults); time: ``W`` is drawn twice."""

    def __init__(self, rng: np.random.Generator, num_clients: int, alpha: float, beta: float,
                 iid: bool, num_features: int, num_classes: int):
        k, d, c = num_clients, num_features, num_classes
        self.num_clients, self.d, self.c, self.iid, self.next = k, d, c, iid, 0
        self.cov_diag = np.arange(1, d + 1, dtype=np.float64) ** -1.2
        rng = copy.deepcopy(rng)
        if iid:
            self.W = rng.normal(0.0, 1.0, size=(c, d))
            self.b = rng.normal(0.0, 1.0, size=c)
            return
        self.u = rng.normal(0.0, alpha, size=k)
        self.B = rng.normal(0.0, beta, size=k)
        self.rng_W = copy.deepcopy(rng)
        self._skip(rng, self.u, (c, d))
        self.rng_b = copy.deepcopy(rng)
        self._skip(rng, self.u, (c,))
        self.rng_v = rng

    def _skip(self, rng: np.random.Generator, loc: np.ndarray, shape: tuple[int, ...]) -> None:
        """Advance ``rng`` past ``normal(loc, 1, size=(K, *shape))``, drawn in chunks."""
        step = max(1, MODEL_CHUNK_BYTES // (8 * int(np.prod(shape))))
        for lo in range(0, self.num_clients, step):
            n = min(step, self.num_clients - lo)
            rng.normal(loc[lo:lo + n].reshape((n,) + (1,) * len(shape)), 1.0, size=(n, *shape))

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(W [n, C, d], b [n, C], v [n, d])`` of the next ``n`` clients (float64)."""
        lo, hi = self.next, self.next + n
        if hi > self.num_clients:
            raise ValueError(f"ModelStream.take: clients {lo}..{hi - 1} of {self.num_clients}")
        self.next = hi
        c, d = self.c, self.d
        if self.iid:
            return (np.broadcast_to(self.W, (n, c, d)), np.broadcast_to(self.b, (n, c)),
                    np.zeros((n, d)))
        return (self.rng_W.normal(self.u[lo:hi, None, None], 1.0, size=(n, c, d)),
                self.rng_b.normal(self.u[lo:hi, None], 1.0, size=(n, c)),
                self.rng_v.normal(self.B[lo:hi, None], 1.0, size=(n, d)))


def chunk_held_out(sizes: np.ndarray, first_client: int, test_fraction: float,
                   rng: np.random.Generator) -> np.ndarray:
    """The test-row mask of consecutive clients ``first_client, ...`` with ``sizes`` rows:
    :func:`~fedopt.data.assemble.held_out_mask` restricted to them, drawn from ``rng`` where
    that function, called on all clients, reaches their rows (it sorts the keys
    ``client + U/2``, ``U ~ U[0,1)`` one per row in row order, and sends each client's first
    ``t_i`` rows of that order to test; the keys of different clients cannot mix, so sorting
    a chunk of whole clients sorts them as the whole array does). Ties between equal keys of
    one client go to the earlier row (a stable sort)."""
    k = sizes.shape[0]
    local = np.repeat(np.arange(k, dtype=np.int64), sizes)
    order = np.argsort((local + first_client) + 0.5 * rng.random(local.shape[0]), kind="stable")
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    rank = np.arange(local.shape[0]) - starts[local[order]]
    mask = np.empty(local.shape[0], dtype=bool)
    mask[order] = rank < split_counts(sizes, test_fraction)[local[order]]
    return mask


def synthetic_nbytes(num_clients: int, num_features: int, num_classes: int, iid: bool,
                     rows: float, storage: str = "memory") -> float:
    """Bytes of memory that building Synthetic needs at its peak for ``rows`` rows in all:
    per client a few int64/float64 arrays (sizes, splits, offsets, ``u``, ``B``); with
    ``storage`` ``"memory"`` per row the float32 features, the int64 label and the test rows'
    int64 client index (the final arrays, which the rows are streamed into); and one chunk of
    at most :data:`BUILD_CHUNK_ROWS` rows held about three times (drawn, its train and test
    selections, the split's per-row int64/float64 temporaries) plus its generating parameters
    (:data:`MODEL_CHUNK_BYTES`, twice). With ``"mmap"`` the final arrays are on disk:
    :func:`synthetic_disk_bytes`."""
    k, d, c = num_clients, num_features, num_classes
    per_row = 4 * d + 16
    chunk = min(float(rows), BUILD_CHUNK_ROWS)
    per_client_model = 8 * (c * d + c + d)
    model = 0 if iid else 2 * max(MODEL_CHUNK_BYTES, per_client_model)
    resident = float(rows) * per_row if storage == "memory" else 0.0
    return float(k) * 64 + resident + chunk * (3 * 4 * d + 6 * 8) + model


def synthetic_disk_bytes(num_clients: int, num_features: int, rows: float) -> float:
    """Bytes of a Synthetic data store on disk: float32 features, int64 labels and test rows'
    clients (at most one per row), ``K + 1`` offsets."""
    return float(rows) * (4 * num_features + 16) + 8.0 * (num_clients + 1)


def _store_request(seed: int, keys: dict) -> dict:
    return store_request("synthetic", STORE_VERSION, seed, keys)


def check_synthetic_memory(seed: int, keys: dict) -> np.ndarray:
    """The rows of each client (:func:`draw_sizes`, the builder's stream), once Synthetic is
    known to fit in free memory (and, with ``storage: mmap``, its store on the free disk
    unless it exists; an existing store must match: :func:`~fedopt.data.store.check_store`);
    ConfigError naming ``data.num_clients`` otherwise. Checked before anything is allocated for
    the clients: first with ``min_samples`` rows each (a lower bound, so a billion clients are
    refused without drawing a billion sizes), then with the drawn sizes. ``keys``: checked keys
    (:func:`check_synthetic`)."""
    k, d, c, iid = keys["num_clients"], keys["num_features"], keys["num_classes"], keys["iid"]
    storage = keys.get("storage", "memory")
    free = available_memory_bytes(torch.device("cpu"))
    lower = synthetic_nbytes(k, d, c, iid, float(k) * keys["min_samples"], storage)
    if lower > free:
        raise ConfigError(f"data.num_clients: {k} clients of at least {keys['min_samples']} rows "
                          f"(data.min_samples) with {d} features and {c} classes need at least "
                          f"{lower / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB of free "
                          f"memory" + ("" if storage == "mmap" else
                                       " (data.storage: mmap keeps them on disk)"))
    sizes = draw_sizes(seed_streams(seed, 4)[1], k, keys["min_samples"], keys["max_samples"],
                       keys["lognormal_mean"], keys["lognormal_sigma"])
    rows = float(sizes.sum(dtype=np.float64))
    need = synthetic_nbytes(k, d, c, iid, rows, storage)
    if need > free:
        raise ConfigError(f"data.num_clients: {k} clients draw {rows:.4g} rows (data.min_samples, "
                          f"data.max_samples, data.lognormal_*) with {d} features: about "
                          f"{need / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB of free "
                          f"memory" + ("" if storage == "mmap" else
                                       " (data.storage: mmap keeps them on disk)"))
    if storage == "mmap" and not check_store(_store_request(seed, keys), keys["cache_dir"]):
        path = store_path(_store_request(seed, keys), keys["cache_dir"])
        disk, free_disk = synthetic_disk_bytes(k, d, rows), disk_free_bytes(path)
        if disk > free_disk:
            raise ConfigError(f"data.num_clients: {k} clients draw {rows:.4g} rows with {d} "
                              f"features: a store of {disk / 2**30:.1f} GiB, more than the "
                              f"{free_disk / 2**30:.1f} GiB free on the disk of "
                              f"{str(path)!r} (data.cache_dir)")
    return sizes


def _stream_synthetic(seed: int, k: dict, sizes: np.ndarray, dest: Destination) -> None:
    """Draw Synthetic client after client into ``dest``'s columns ``x_train``, ``y_train``,
    ``x_test``, ``y_test``, ``client_test`` (rows in client order) and ``offsets``; streams as
    in :func:`build_synthetic`."""
    num_clients, d, f = k["num_clients"], k["num_features"], k["test_fraction"]
    rng_model, _, rng_x, rng_split = seed_streams(seed, 4)
    model = ModelStream(rng_model, num_clients, k["alpha"], k["beta"], k["iid"], d,
                        k["num_classes"])
    n_held = split_counts(sizes, f)
    n_train = sizes - n_held
    x_train = dest.column("x_train", (int(n_train.sum()), d), np.float32)
    y_train = dest.column("y_train", (int(n_train.sum()),), np.int64)
    x_test = dest.column("x_test", (int(n_held.sum()), d), np.float32)
    y_test = dest.column("y_test", (int(n_held.sum()),), np.int64)
    client_test = dest.column("client_test", (int(n_held.sum()),), np.int64)
    dest.column("offsets", (num_clients + 1,), np.int64).append(
        np.concatenate(([0], np.cumsum(n_train))))
    scale = np.sqrt(model.cov_diag).astype(np.float32)
    per_chunk = max(1, MODEL_CHUNK_BYTES // (8 * (k["num_classes"] * (d + 1) + d)))
    ends = np.cumsum(sizes)
    lo = 0
    while lo < num_clients:   # a chunk of whole clients (at least one)
        row0 = int(ends[lo] - sizes[lo])
        hi = max(lo + 1, int(np.searchsorted(ends, row0 + BUILD_CHUNK_ROWS, side="right")))
        hi = min(hi, num_clients, lo + per_chunk)
        W, b, v = model.take(hi - lo)
        v32 = v.astype(np.float32)
        x = rng_x.standard_normal((int(ends[hi - 1]) - row0, d), dtype=np.float32)
        x *= scale
        y = np.empty(x.shape[0], dtype=np.int64)
        for c in range(hi - lo):  # cheap per-client numpy ops (≈ 20 µs each)
            rows = slice(int(ends[lo + c] - sizes[lo + c]) - row0, int(ends[lo + c]) - row0)
            x[rows] += v32[c]
            logits = x[rows].astype(np.float64) @ W[c].T + b[c]
            y[rows] = logits.argmax(axis=1)
        test = chunk_held_out(sizes[lo:hi], lo, f, rng_split)
        x_train.append(x[~test])
        y_train.append(y[~test])
        x_test.append(x[test])
        y_test.append(y[test])
        client_test.append(np.repeat(np.arange(lo, hi, dtype=np.int64), n_held[lo:hi]))
        lo = hi


def build_synthetic(seed: int, **keys) -> FederatedDataset:
    """Synthetic(α, β) as a :class:`FederatedDataset`; keys and defaults as in
    :func:`check_synthetic` (which raises ConfigError naming a bad key).

    Streams: ``seed_streams(seed, 4)`` gives the model (W, b, v), the sizes, the features and
    the test split. Clients are drawn in chunks of whole clients (about
    :data:`BUILD_CHUNK_ROWS` rows, at most :data:`MODEL_CHUNK_BYTES` of parameters): their
    parameters (:class:`ModelStream`), features and split (:func:`chunk_held_out`), each from
    its stream where one draw over all clients would reach them, and the chunk's train and test
    rows are appended to the final arrays. So the peak is the data set plus one chunk, and with
    ``storage: mmap`` (a store on disk, :mod:`fedopt.data.store`, reused by a later run with
    the same keys and seed) one chunk: the tensors are then views of memory-mapped files."""
    k = check_synthetic(**keys)
    sizes = check_synthetic_memory(seed, k)   # stream 1 of seed_streams(seed, 4)

    def build(dest: Destination) -> None:
        _stream_synthetic(seed, k, sizes, dest)

    if k["storage"] == "mmap":
        arrays = build_stored(_store_request(seed, k), k["cache_dir"], build)
    else:
        dest = MemoryDestination()
        build(dest)
        arrays = dest.arrays()
    t = as_tensors(arrays)
    name = "synthetic_iid" if k["iid"] else f"synthetic({k['alpha']:g},{k['beta']:g})"
    return FederatedDataset(x=t["x_train"], y=t["y_train"], offsets=t["offsets"],
                            x_test=t["x_test"], y_test=t["y_test"],
                            client_test=t["client_test"], num_classes=k["num_classes"],
                            name=name)


def synthetic_with_model(seed: int, **keys) -> tuple[FederatedDataset, SyntheticModel]:
    """Synthetic(α, β) (:func:`build_synthetic`) and the parameters that generated it, all
    clients' at once (:func:`draw_model`: ``W`` is ``[K, C, d]`` float64; for tests and
    oracles)."""
    data = build_synthetic(seed, **keys)
    k = check_synthetic(**keys)
    model = draw_model(seed_streams(seed, 4)[0], k["num_clients"], k["alpha"], k["beta"],
                       k["iid"], k["num_features"], k["num_classes"])
    return data, model


class _HeldRows(Column):
    """A train column of the whole data set, streamed front to back, of which only the rows
    ``keep`` (sorted global row indices: the held clients' rows) are stored, in ``array``,
    while every streamed row is summed in float64: ``total = Σ v``, ``total_abs = Σ |v|``
    (features) or the exact integer ``Σ v`` (labels). ``array`` has dtype ``kept_dtype``
    (a wider float keeps the values exactly). ``keep`` is set by the ``offsets`` column
    (:class:`_ShardDestination`), which the builder writes before any row."""

    def __init__(self, shape: tuple[int, ...], dtype, kept_dtype):
        super().__init__(shape, dtype)
        self.kept_dtype = np.dtype(kept_dtype)
        self.keep: np.ndarray | None = None
        self.array: np.ndarray | None = None
        self.total = self.total_abs = 0.0 if self.dtype.kind == "f" else 0

    def place(self, keep: np.ndarray) -> None:
        self.keep = keep
        self.array = np.empty((keep.size,) + self.shape[1:], dtype=self.kept_dtype)

    def _write(self, values: np.ndarray) -> None:
        if self.keep is None:
            raise ValueError("a shard's train rows came before the data set's offsets")
        lo = self.rows
        a, b = np.searchsorted(self.keep, [lo, lo + values.shape[0]])
        self.array[a:b] = values[self.keep[a:b] - lo]
        if self.dtype.kind == "f":
            self.total += float(np.sum(values, dtype=np.float64))
            self.total_abs += float(np.abs(values).sum(dtype=np.float64))
        else:
            self.total += int(values.sum(dtype=np.int64))


class _Dropped(Column):
    """A column nobody keeps (a shard has no test rows)."""

    def _write(self, values: np.ndarray) -> None:
        pass


class _Offsets(Column):
    """The whole data set's train offsets; on arrival they fix which rows the train columns
    keep (those of the held clients) and the shard's own offsets."""

    def __init__(self, shape: tuple[int, ...], dtype, dest: "_ShardDestination"):
        super().__init__(shape, dtype)
        self.dest = dest

    def _write(self, values: np.ndarray) -> None:
        self.dest.place(values)


class _ShardDestination(Destination):
    """Where :func:`_stream_synthetic` writes when only the train rows of the clients
    ``held`` (a bool mask [K]) are wanted: those rows are kept (features as ``x_dtype``),
    test rows dropped, and the whole set's train counts and sums recorded
    (:func:`build_synthetic_shard`)."""

    def __init__(self, held: np.ndarray, x_dtype):
        self.held, self.x_dtype = held, x_dtype
        self.train: dict[str, _HeldRows] = {}
        self.offsets: np.ndarray | None = None
        self.shard_offsets: np.ndarray | None = None

    def column(self, name: str, shape: tuple[int, ...], dtype) -> Column:
        if name == "offsets":
            return _Offsets(shape, dtype, self)
        if name in ("x_train", "y_train"):
            self.train[name] = _HeldRows(shape, dtype, self.x_dtype if name == "x_train"
                                         else dtype)
            return self.train[name]
        return _Dropped(shape, dtype)

    def place(self, offsets: np.ndarray) -> None:
        counts = np.diff(offsets)
        held = np.flatnonzero(self.held)
        keep = (np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in held])
                if held.size else np.zeros(0, dtype=np.int64)).astype(np.int64)
        for col in self.train.values():
            col.place(keep)
        self.offsets = offsets.copy()
        self.shard_offsets = np.concatenate(
            [[0], np.cumsum(np.where(self.held, counts, 0))]).astype(np.int64)


def _check_shard_memory(k: dict, sizes: np.ndarray, held: np.ndarray, x_itemsize: int) -> None:
    """ConfigError naming ``data.num_clients`` when streaming Synthetic while keeping the train
    rows of the clients ``held`` does not fit in free memory: :func:`synthetic_nbytes` without
    the final arrays (as for a store on disk), plus the kept rows (features of ``x_itemsize``
    bytes, int64 label) and the mask."""
    n, d = k["num_clients"], k["num_features"]
    rows = float(sizes.sum(dtype=np.float64))
    kept = float((sizes - split_counts(sizes, k["test_fraction"]))[held].sum(dtype=np.float64))
    need = (synthetic_nbytes(n, d, k["num_classes"], k["iid"], rows, "mmap")
            + kept * (x_itemsize * d + 8) + float(n))
    free = available_memory_bytes(torch.device("cpu"))
    if need > free:
        raise ConfigError(f"data.num_clients: streaming {n} clients ({rows:.4g} rows) to keep "
                          f"the {kept:.4g} train rows of {int(held.sum())} of them needs about "
                          f"{need / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB of "
                          f"free memory")


def build_synthetic_shard(seed: int, client_ids: np.ndarray, x_dtype=np.float32, **keys
                          ) -> tuple[FederatedDataset, dict]:
    """The train rows of the clients ``client_ids`` (global ids; repeats ignored) of
    :func:`build_synthetic`'s data set, built without holding the other clients' rows, and
    the whole set's train sums.

    The data set is streamed as :func:`build_synthetic` streams it (the same code, the same
    numbers), but each chunk keeps only its held clients' train rows: memory is the shard plus
    one chunk, never the whole set. Returns ``(shard, sums)``: ``shard`` equals
    :func:`fedopt.client.shard.shard_dataset` of the whole set (cast to ``x_dtype``) bit for
    bit: ``x`` ``[R, d]`` in ``x_dtype`` (float32, or float64 holding the same values exactly,
    with no float32 copy of the shard beside it), ``y`` int64 ``[R]``, ``offsets``
    ``[K + 1]`` with zero rows for clients not held, no test rows; ``sums`` over ALL K
    clients' train rows: ``counts`` (int64 ``[K]``), ``x_sum`` = Σ x and ``x_abs_sum`` =
    Σ |x| (float64, summed a chunk at a time, so equal to a sum over the whole array up to
    rounding), ``y_sum`` = Σ y (exact). ``storage`` and
    ``cache_dir`` are not read (nothing is stored). Raises IndexError for ids outside
    0..K−1 and ConfigError (naming the key) as :func:`build_synthetic`, or naming
    ``data.num_clients`` when the shard and one chunk do not fit in free memory; ValueError
    for an ``x_dtype`` other than float32/float64."""
    k = check_synthetic(**keys)
    num = k["num_clients"]
    ids = np.asarray(client_ids, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= num):
        raise IndexError(f"client ids must lie in 0..{num - 1}, got {ids.min()}..{ids.max()}")
    held = np.zeros(num, dtype=bool)
    held[ids] = True
    sizes = draw_sizes(seed_streams(seed, 4)[1], num, k["min_samples"], k["max_samples"],
                       k["lognormal_mean"], k["lognormal_sigma"])
    if np.dtype(x_dtype) not in (np.float32, np.float64):
        raise ValueError(f"x_dtype must be float32 or float64, got {x_dtype}")
    _check_shard_memory(k, sizes, held, np.dtype(x_dtype).itemsize)
    dest = _ShardDestination(held, np.dtype(x_dtype))
    _stream_synthetic(seed, k, sizes, dest)
    t = as_tensors({"x": dest.train["x_train"].array, "y": dest.train["y_train"].array,
                    "offsets": dest.shard_offsets})
    name = "synthetic_iid" if k["iid"] else f"synthetic({k['alpha']:g},{k['beta']:g})"
    shard = FederatedDataset(x=t["x"], y=t["y"], offsets=t["offsets"],
                             x_test=t["x"].new_zeros((0, k["num_features"])),
                             y_test=t["y"].new_zeros(0), client_test=t["offsets"].new_zeros(0),
                             num_classes=k["num_classes"], name=name)
    x_col, y_col = dest.train["x_train"], dest.train["y_train"]
    sums = {"counts": np.diff(dest.offsets).astype(np.int64), "x_sum": x_col.total,
            "x_abs_sum": x_col.total_abs, "y_sum": y_col.total}
    return shard, sums
