"""Turn rows + a client index per row into a :class:`FederatedDataset` (vectorized, no per-client
Python work).

Per-client test split: client ``i`` with ``r_i`` rows sends

    t_i = min(⌊f · r_i⌋, r_i − 1)

uniformly chosen rows to the test union (``f`` = ``test_fraction``) and keeps
``n_i = r_i − t_i ≥ 1`` for training. Rows keep their original relative order inside each client
(the sort by client is stable).

When a separate test set is given without client indices, :func:`assign_test_clients` gives each
test row of class ``c`` to client ``i`` with probability ``n_{i,c} / Σ_j n_{j,c}`` (``n_{i,c}``:
client ``i``'s train rows of class ``c``), so each client's test rows follow its own label mix;
classes absent from training go to a uniformly random client.
"""
from __future__ import annotations

import numpy as np
import torch

from fedopt.data.checks import fraction
from fedopt.data.dataset import FederatedDataset
from fedopt.schema import ConfigError


def split_counts(rows_per_client: np.ndarray, test_fraction: float) -> np.ndarray:
    """``t_i = min(⌊f · r_i⌋, r_i − 1)`` test rows per client (the epsilon absorbs float error
    in products such as ``0.2 · 50``)."""
    f = fraction(test_fraction, "data.test_fraction")
    r = np.asarray(rows_per_client, dtype=np.int64)
    t = np.floor(f * r + 1e-9).astype(np.int64)
    return np.clip(np.minimum(t, r - 1), 0, None)


def held_out_mask(client: np.ndarray, num_clients: int, test_fraction: float,
              rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of the rows sent to the test union: per client ``t_i`` uniformly random rows."""
    counts = np.bincount(client, minlength=num_clients)
    n_test = split_counts(counts, test_fraction)
    # by client, random inside: keys client + U/2 with U ~ U[0,1) stay in [client, client + 1/2]
    # after float64 rounding, so the groups cannot mix (one argsort; lexsort is 10x slower)
    order = np.argsort(client + 0.5 * rng.random(client.shape[0]))
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(client.shape[0]) - starts[client[order]]
    mask = np.empty(client.shape[0], dtype=bool)
    mask[order] = rank < n_test[client[order]]
    return mask


def assign_test_clients(y_train: np.ndarray, client_train: np.ndarray, y_test: np.ndarray,
                        num_clients: int, rng: np.random.Generator) -> np.ndarray:
    """Client per test row: class-``c`` rows go to client ``i`` w.p. ``n_{i,c} / Σ_j n_{j,c}``."""
    out = np.empty(y_test.shape[0], dtype=np.int64)
    for c in np.unique(y_test):  # one vectorized draw per class
        rows = np.flatnonzero(y_test == c)
        w = np.bincount(client_train[y_train == c], minlength=num_clients).astype(np.float64)
        p = w / w.sum() if w.sum() > 0 else np.full(num_clients, 1.0 / num_clients)
        out[rows] = rng.choice(num_clients, size=rows.shape[0], p=p)
    return out


def assemble(x: np.ndarray, y: np.ndarray, client: np.ndarray, num_clients: int, *,
             num_classes: int, name: str, test_fraction: float = 0.2,
             rng: np.random.Generator | None = None,
             x_test: np.ndarray | None = None, y_test: np.ndarray | None = None,
             client_test: np.ndarray | None = None) -> FederatedDataset:
    """Build the flat tensors. Inputs are validated numpy arrays (features any real dtype,
    labels/clients integer). Without ``x_test`` the test union is split off per client with
    ``rng``; with ``x_test``/``y_test``/``client_test`` those are the test union.

    Features become float32 tensors, labels/indices int64 (floating regression targets:
    float32). Every client must own a row.
    The result may share memory with the inputs (callers pass arrays they own).
    """
    client = np.asarray(client, dtype=np.int64)
    counts = np.bincount(client, minlength=num_clients)
    if counts.shape[0] != num_clients or (counts == 0).any():
        raise ConfigError(f"every client 0..{num_clients - 1} needs at least one row "
                          f"(empty: {np.flatnonzero(counts == 0)[:10].tolist()})")
    if x_test is None:
        if rng is None:
            raise ValueError("assemble needs rng to split off test rows")
        is_test = held_out_mask(client, num_clients, test_fraction, rng)
        train = np.flatnonzero(~is_test)
        test = np.flatnonzero(is_test)
        x_test, y_test, client_test = _rows(x, test), y[test], client[test]
        x, y, client = _rows(x, train), y[train], client[train]
    elif y_test is None or client_test is None:
        raise ValueError("assemble: x_test needs y_test and client_test")
    order = np.argsort(client, kind="stable")
    test_order = np.argsort(np.asarray(client_test), kind="stable")
    counts = np.bincount(client, minlength=num_clients)
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    return FederatedDataset(
        x=_features(x, order),
        y=torch.from_numpy(_targets(y)[order]),
        offsets=torch.from_numpy(offsets),
        x_test=_features(x_test, test_order),
        y_test=torch.from_numpy(_targets(y_test)[test_order]),
        client_test=torch.from_numpy(np.asarray(client_test, dtype=np.int64)[test_order]),
        num_classes=int(num_classes),
        name=name,
    )


def _rows(x: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``x[index]`` along the first axis (``np.take`` is much faster than fancy indexing here)."""
    return np.take(x, index, axis=0)


def _targets(y: np.ndarray) -> np.ndarray:
    """Class labels as int64; floating regression targets ([rows] or [rows, p]) as float32."""
    y = np.asarray(y)
    return y.astype(np.float32) if y.dtype.kind == "f" else y.astype(np.int64)


def _features(x: np.ndarray, order: np.ndarray) -> torch.Tensor:
    """``x[order]`` as a contiguous float32 tensor (skips the gather when already in order)."""
    if not np.array_equal(order, np.arange(order.shape[0])):
        x = _rows(x, order)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
