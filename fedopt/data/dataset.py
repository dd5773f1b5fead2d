"""The federated data set: all clients' rows in a few flat tensors.

Notation (shared/algorithms/federated.md §0): ``N`` clients (``K`` in the tensor shapes below,
as in the engine's code), client ``i`` holds ``D_i`` with ``n_i = |D_i|`` train rows and
``n = Σ_i n_i``. Rows are grouped by client, so

    D_i = (x[offsets[i]:offsets[i+1]], y[offsets[i]:offsets[i+1]]),   n_i = offsets[i+1] - offsets[i].

There are no per-client Python objects: 10,000 clients are three tensors and a [K+1] index, and
the vectorized engine gathers any set of clients with one indexing operation.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from fedopt.schema import ConfigError

#: the largest ``[K, C]`` histogram :meth:`FederatedDataset.label_counts` builds (2 GiB of int64)
MAX_LABEL_COUNTS = 2**28
#: rows read at once by the passes over all rows (:meth:`FederatedDataset.label_counts`,
#: :func:`check_values`), so a memory-mapped data set is read, not copied
SCAN_ROWS = 1 << 22


@dataclass(frozen=True)
class FederatedDataset:
    """All clients' train rows (grouped by client) plus the union of their test rows.

    Attributes:
        x: ``[n, *feature_shape]`` train features; client 0's rows first, then client 1's, ...
        y: ``[n]`` int64 train labels in ``0..num_classes-1`` (classification), or floating
            regression targets ``[n]`` or ``[n, d]`` (:attr:`is_regression`).
        offsets: ``[K+1]`` int64, ``offsets[0] = 0``, ``offsets[K] = n``, non-decreasing;
            client ``i``'s train rows are ``offsets[i]:offsets[i+1]``.
        x_test: ``[M, *feature_shape]`` the union of all clients' test rows, each row once.
        y_test: ``[M]`` test labels (or targets: ``y``'s dtype and trailing shape).
        client_test: ``[M]`` int64 client index ``0..K-1`` of each test row.
        num_classes: number of classes ``C`` — the model's output width; for regression
            targets the target width (``d``, or 1 for targets ``[n]``).
        name: a short human-readable name (e.g. ``"synthetic(1,1)"``).
    """

    x: Tensor
    y: Tensor
    offsets: Tensor
    x_test: Tensor
    y_test: Tensor
    client_test: Tensor
    num_classes: int
    name: str

    def __post_init__(self) -> None:
        _check_layout(self)

    # ----------------------------------------------------------------- shape facts
    @property
    def num_clients(self) -> int:
        """``K``, the number of clients."""
        return int(self.offsets.numel()) - 1

    @property
    def counts(self) -> Tensor:
        """``[K]`` int64 train rows per client, ``n_i = offsets[i+1] - offsets[i]``."""
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one row's features, e.g. ``(60,)`` or ``(1, 8, 8)``."""
        return tuple(self.x.shape[1:])

    @property
    def client_index(self) -> Tensor:
        """``[n]`` int64 client of each train row (``repeat_interleave`` of ``counts``)."""
        k = torch.arange(self.num_clients, device=self.offsets.device)
        return torch.repeat_interleave(k, self.counts)

    @property
    def is_regression(self) -> bool:
        """True when the targets are floating (regression), False for int64 class labels."""
        return self.y.dtype.is_floating_point

    # ------------------------------------------------------------------- accessors
    def client(self, i: int, split: str = "train") -> tuple[Tensor, Tensor]:
        """Client ``i``'s rows ``(x_i, y_i)``: its train slice, or with ``split="test"`` its
        test rows (selected from the union by ``client_test == i``)."""
        if not isinstance(i, numbers.Integral) or isinstance(i, bool):
            raise TypeError(f"client index must be an int, got {type(i).__name__}")
        i, k = int(i), self.num_clients
        if not -k <= i < k:
            raise IndexError(f"client index {i} out of range for {k} clients")
        i = i % k
        if split == "train":
            lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
            return self.x[lo:hi], self.y[lo:hi]
        if split == "test":
            mask = self.client_test == i
            return self.x_test[mask], self.y_test[mask]
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")

    def label_counts(self, split: str = "train") -> Tensor:
        """``[K, C]`` int64 histogram: entry ``(i, c)`` counts client ``i``'s rows of class ``c``.

        ValueError when ``K · C`` exceeds :data:`MAX_LABEL_COUNTS` (2^28 entries, 2 GiB), before
        allocating it."""
        if self.is_regression:
            raise ValueError(f"label_counts: {self.name} is a regression data set (float "
                             f"targets), it has no class labels")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        k, c = self.num_clients, self.num_classes
        if k * c > MAX_LABEL_COUNTS:
            raise ValueError(f"label_counts: {k} clients x {c} classes (num_classes) is more "
                             f"than {MAX_LABEL_COUNTS:,} entries; count the classes per client "
                             f"another way (e.g. np.unique over (client, label) pairs)")
        y = self.y if split == "train" else self.y_test
        out = torch.zeros(k * c, dtype=torch.int64, device=y.device)
        for lo in range(0, y.shape[0], SCAN_ROWS):   # O(K·C + SCAN_ROWS) memory at any size
            rows = torch.arange(lo, min(lo + SCAN_ROWS, y.shape[0]), device=y.device)
            client = (torch.searchsorted(self.offsets, rows, right=True) - 1 if split == "train"
                      else self.client_test[lo:lo + SCAN_ROWS])
            out += torch.bincount(client * c + y[lo:lo + SCAN_ROWS], minlength=k * c)
        return out.reshape(k, c)

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> FederatedDataset:
        """A copy on ``device`` (all tensors move); features cast to ``dtype`` if given
        (a floating dtype), as are regression targets; labels and indices stay int64."""
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype for features, got {dtype}")
        return replace(
            self,
            x=self.x.to(device=device, dtype=dtype),
            y=self.y.to(device=device, dtype=dtype if self.is_regression else None),
            offsets=self.offsets.to(device=device),
            x_test=self.x_test.to(device=device, dtype=dtype),
            y_test=self.y_test.to(device=device, dtype=dtype if self.is_regression else None),
            client_test=self.client_test.to(device=device),
        )

    def describe(self) -> dict[str, Any]:
        """Summary numbers: name, clients, rows (train), test_rows, min_n / median_n / max_n
        (over ``n_i``), mean_n, classes, feature_shape."""
        counts = self.counts.cpu()
        return {
            "name": self.name,
            "clients": self.num_clients,
            "rows": int(self.x.shape[0]),
            "test_rows": int(self.x_test.shape[0]),
            "min_n": int(counts.min()),
            "median_n": float(counts.double().median()),
            "mean_n": float(counts.double().mean()),
            "max_n": int(counts.max()),
            "classes": self.num_classes,
            "task": "regression" if self.is_regression else "classification",
            "feature_shape": list(self.feature_shape),
        }


def _check_layout(d: FederatedDataset) -> None:
    """Cheap consistency checks (shapes, dtypes, offsets); errors name the field."""
    for field in ("x", "y", "offsets", "x_test", "y_test", "client_test"):
        if not isinstance(getattr(d, field), Tensor):
            raise TypeError(f"FederatedDataset.{field}: must be a torch.Tensor, "
                            f"got {type(getattr(d, field)).__name__}")
    for field in ("offsets", "client_test") + (() if d.is_regression else ("y", "y_test")):
        t = getattr(d, field)
        if t.dtype != torch.int64 or t.ndim != 1:
            raise ValueError(f"FederatedDataset.{field}: must be a 1-D int64 tensor, "
                             f"got {t.dtype} of shape {tuple(t.shape)}")
    if d.x.ndim < 2 or d.x_test.ndim < 2:
        raise ValueError("FederatedDataset.x and x_test must have shape [rows, *feature_shape]")
    if not d.x.dtype.is_floating_point or not d.x_test.dtype.is_floating_point:
        raise ValueError("FederatedDataset.x and x_test must be floating tensors")
    if d.is_regression:
        _check_targets(d)
    if d.y.shape[0] != d.x.shape[0]:
        raise ValueError(f"FederatedDataset.y has {d.y.shape[0]} rows, x has {d.x.shape[0]}")
    if tuple(d.x_test.shape[1:]) != tuple(d.x.shape[1:]):
        raise ValueError(f"FederatedDataset.x_test feature shape {tuple(d.x_test.shape[1:])} "
                         f"differs from x's {tuple(d.x.shape[1:])}")
    if not d.y_test.shape[0] == d.client_test.shape[0] == d.x_test.shape[0]:
        raise ValueError("FederatedDataset.x_test, y_test and client_test must have equal rows")
    if d.offsets.numel() < 2:
        raise ValueError("FederatedDataset.offsets must have K+1 >= 2 entries")
    if int(d.offsets[0]) != 0 or int(d.offsets[-1]) != d.x.shape[0]:
        raise ValueError(f"FederatedDataset.offsets must run from 0 to {d.x.shape[0]} (rows of x)")
    if bool((d.offsets[1:] < d.offsets[:-1]).any()):
        raise ValueError("FederatedDataset.offsets must be non-decreasing")
    if not isinstance(d.num_classes, int) or d.num_classes < 1:
        raise ValueError(f"FederatedDataset.num_classes must be a positive int, got {d.num_classes!r}")
    k = d.offsets.numel() - 1
    if d.client_test.numel() and (int(d.client_test.min()) < 0 or int(d.client_test.max()) >= k):
        raise ValueError(f"FederatedDataset.client_test must lie in 0..{k - 1}")
    for field in () if d.is_regression else ("y", "y_test"):
        t = getattr(d, field)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= d.num_classes):
            raise ValueError(f"FederatedDataset.{field}: must lie in 0..{d.num_classes - 1}")


def _check_targets(d: FederatedDataset) -> None:
    """Regression targets: floating ``[n]`` or ``[n, d]``, y_test alike, width = num_classes."""
    for field in ("y", "y_test"):
        t = getattr(d, field)
        if not t.dtype.is_floating_point or t.ndim not in (1, 2):
            raise ValueError(f"FederatedDataset.{field}: regression targets must be a floating "
                             f"tensor [rows] or [rows, d] like y, got {t.dtype} of shape "
                             f"{tuple(t.shape)}")
    if d.y_test.shape[1:] != d.y.shape[1:]:
        raise ValueError(f"FederatedDataset.y_test: target shape {tuple(d.y_test.shape[1:])} "
                         f"differs from y's {tuple(d.y.shape[1:])}")
    width = d.y.shape[1] if d.y.ndim == 2 else 1
    if d.num_classes != width:
        raise ValueError(f"FederatedDataset.num_classes: must be the regression targets' width "
                         f"{width} (the model's output width), got {d.num_classes!r}")


def check_values(d: FederatedDataset) -> None:
    """The value checks a data set built by fedopt's own loaders has passed, for one a user
    built directly: ValueError naming ``FederatedDataset.x`` or ``x_test`` when a feature is
    NaN or infinite. (Shapes, dtypes, offsets and label ranges are checked on construction.)
    One pass over the features in chunks (a memory-mapped data set is read, not copied);
    :class:`~fedopt.simulation.Simulation` runs it once."""
    for field in ("x", "x_test") + (("y", "y_test") if d.is_regression else ()):
        t = getattr(d, field)
        step = max(1, SCAN_ROWS * 4 // max(1, t[:1].numel()))   # 2^24 entries a chunk
        for lo in range(0, t.shape[0], step):
            if not bool(torch.isfinite(t[lo:lo + step]).all()):
                raise ConfigError(f"FederatedDataset.{field} contains NaN or inf values")
