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
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import torch
from pydantic import Field, model_validator

from fedopt.data.assemble import assemble, held_out_mask, split_counts
from fedopt.data.checks import TestFraction, seed_streams
from fedopt.data.dataset import FederatedDataset
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

    @model_validator(mode="after")
    def _sizes(self) -> "SyntheticData":
        if self.max_samples is not None and self.max_samples < self.min_samples:
            raise fail("max_samples", f"must be >= data.min_samples ({self.min_samples}), "
                                      f"got {self.max_samples}")
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
                    lognormal_sigma: float = 2.0) -> dict:
    """The keys of :func:`synthetic_with_model`, checked by :class:`SyntheticData` and
    normalised without drawing any data (the config validator runs the same schema).
    ConfigError naming ``data.<key>``: α, β and the log-normal σ must be finite and >= 0,
    counts positive integers, ``test_fraction`` in [0, 1), ``max_samples >= min_samples``."""
    keys = {"alpha": alpha, "beta": beta, "num_clients": num_clients, "iid": iid,
            "num_features": num_features, "num_classes": num_classes,
            "test_fraction": test_fraction, "min_samples": min_samples,
            "max_samples": max_samples, "lognormal_mean": lognormal_mean,
            "lognormal_sigma": lognormal_sigma}
    return parse(SyntheticData, keys, "data").model_dump(exclude={"name"})


#: rows drawn at once while streaming Synthetic into its final arrays (≈ 60 MB of float32
#: features at d = 60: the only transient that scales with the data)
BUILD_CHUNK_ROWS = 1 << 18


def synthetic_nbytes(num_clients: int, num_features: int, num_classes: int, iid: bool,
                     rows: float) -> float:
    """Bytes that building Synthetic needs at its peak for ``rows`` rows in all: the generating
    parameters (float64 ``W [K, C, d]``, ``b``, ``v``; ``v`` only for the iid variant), the
    row counts, and per row the float32 features once (they are streamed into the final
    arrays, :func:`synthetic_with_model`), the int64 labels and the split's per-row int64 and
    float64 temporaries (six); plus one chunk of :data:`BUILD_CHUNK_ROWS` rows held up to
    three times more (drawn, and its train and test selections)."""
    k, d, c = num_clients, num_features, num_classes
    per_client = 8 * ((d + 2) if iid else (c * d + c + d + 2)) + 24
    per_row = 4 * d + 7 * 8
    rows = float(rows) + min(float(rows), BUILD_CHUNK_ROWS) * 3
    return float(k) * per_client + float(rows) * per_row


def check_synthetic_memory(seed: int, keys: dict) -> np.ndarray:
    """The rows of each client (:func:`draw_sizes`, the builder's stream), once Synthetic is
    known to fit in free memory; ConfigError naming ``data.num_clients`` otherwise. Checked
    before anything is allocated for the clients: first with ``min_samples`` rows each (a lower
    bound, so a billion clients are refused without drawing a billion sizes), then with the
    drawn sizes. ``keys``: checked keys (:func:`check_synthetic`)."""
    k, d, c, iid = keys["num_clients"], keys["num_features"], keys["num_classes"], keys["iid"]
    free = available_memory_bytes(torch.device("cpu"))
    lower = synthetic_nbytes(k, d, c, iid, float(k) * keys["min_samples"])
    if lower > free:
        raise ConfigError(f"data.num_clients: {k} clients of at least {keys['min_samples']} rows "
                          f"(data.min_samples) with {d} features and {c} classes need at least "
                          f"{lower / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB of free "
                          f"memory")
    sizes = draw_sizes(seed_streams(seed, 4)[1], k, keys["min_samples"], keys["max_samples"],
                       keys["lognormal_mean"], keys["lognormal_sigma"])
    rows = float(sizes.sum(dtype=np.float64))
    need = synthetic_nbytes(k, d, c, iid, rows)
    if need > free:
        raise ConfigError(f"data.num_clients: {k} clients draw {rows:.4g} rows (data.min_samples, "
                          f"data.max_samples, data.lognormal_*) with {d} features: about "
                          f"{need / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB of free "
                          f"memory")
    return sizes


def synthetic_with_model(seed: int, **keys) -> tuple[FederatedDataset, SyntheticModel]:
    """Synthetic(α, β) and the parameters that generated it (for tests and oracles); keys and
    defaults as in :func:`check_synthetic` (which raises ValueError naming a bad key).

    Streams: ``seed_streams(seed, 4)`` gives the model (W, b, v), the sizes, the features and
    the test split. The features are drawn client after client in chunks of about
    :data:`BUILD_CHUNK_ROWS` rows (the same stream as one draw of all rows) straight into the
    final train and test arrays, whose split (:func:`~fedopt.data.assemble.held_out_mask`) is
    drawn first; so the peak is the data set plus one chunk, not the data set twice."""
    k = check_synthetic(**keys)
    alpha, beta, num_clients, iid = k["alpha"], k["beta"], k["num_clients"], k["iid"]
    num_features, num_classes, test_fraction = k["num_features"], k["num_classes"], k["test_fraction"]
    # rows per client (stream 1 of seed_streams(seed, 4)), drawn after the memory bound
    sizes = check_synthetic_memory(seed, k)
    rng_model, _, rng_x, rng_split = seed_streams(seed, 4)
    model = draw_model(rng_model, num_clients, alpha, beta, iid, num_features, num_classes)
    is_test = held_out_mask(np.repeat(np.arange(num_clients, dtype=np.int64), sizes),
                            num_clients, test_fraction, rng_split)
    n_test = int(is_test.sum())
    x_train = np.empty((is_test.shape[0] - n_test, num_features), dtype=np.float32)
    x_test = np.empty((n_test, num_features), dtype=np.float32)
    y_train = np.empty(x_train.shape[0], dtype=np.int64)
    y_test = np.empty(n_test, dtype=np.int64)
    scale = np.sqrt(model.cov_diag).astype(np.float32)
    v32 = model.v.astype(np.float32)
    ends = np.cumsum(sizes)
    at_train = at_test = 0
    lo_client = 0
    while lo_client < num_clients:   # a chunk of whole clients (at least one)
        row0 = int(ends[lo_client] - sizes[lo_client])
        hi_client = max(lo_client + 1,
                        int(np.searchsorted(ends, row0 + BUILD_CHUNK_ROWS, side="right")))
        hi_client = min(hi_client, num_clients)
        x = rng_x.standard_normal((int(ends[hi_client - 1]) - row0, num_features),
                                  dtype=np.float32)
        x *= scale
        y = np.empty(x.shape[0], dtype=np.int64)
        for c in range(lo_client, hi_client):  # cheap per-client numpy ops (≈ 20 µs each)
            rows = slice(int(ends[c] - sizes[c]) - row0, int(ends[c]) - row0)
            x[rows] += v32[c]
            logits = x[rows].astype(np.float64) @ model.W[c].T + model.b[c]
            y[rows] = logits.argmax(axis=1)
        test = is_test[row0:row0 + x.shape[0]]
        n_tr = x.shape[0] - int(test.sum())
        x_train[at_train:at_train + n_tr] = x[~test]
        y_train[at_train:at_train + n_tr] = y[~test]
        x_test[at_test:at_test + x.shape[0] - n_tr] = x[test]
        y_test[at_test:at_test + x.shape[0] - n_tr] = y[test]
        at_train, at_test = at_train + n_tr, at_test + x.shape[0] - n_tr
        lo_client = hi_client
    del x, y
    n_held = split_counts(sizes, test_fraction)
    clients = np.arange(num_clients, dtype=np.int64)
    name = "synthetic_iid" if iid else f"synthetic({alpha:g},{beta:g})"
    data = assemble(x_train, y_train, np.repeat(clients, sizes - n_held), num_clients,
                    num_classes=num_classes, name=name, x_test=x_test, y_test=y_test,
                    client_test=np.repeat(clients, n_held))
    return data, model


def build_synthetic(seed: int, **keys) -> FederatedDataset:
    """Synthetic(α, β) as a :class:`FederatedDataset` (keys as in :func:`synthetic_with_model`)."""
    return synthetic_with_model(seed, **keys)[0]
