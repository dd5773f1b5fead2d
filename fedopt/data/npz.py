"""A user's own data set from one ``.npz`` file.

Accepted layouts (array names inside the file):

1. Federated: ``x_train, y_train, client_train, x_test, y_test, client_test`` — the client of
   every row is given (``0..K-1``, ``K = max(client_train) + 1``). Rows need not be sorted by
   client (they are sorted stably). Every client ``0..K-1`` must own a train row.
2. Plain: ``x, y`` — partitioned with ``data.partition`` over ``data.num_clients`` clients and
   split ``data.test_fraction`` per client.
3. Plain with a test set: ``x_train, y_train, x_test, y_test`` — the train rows are partitioned,
   each test row goes to a client holding its class (see :func:`build_from_arrays`).

Features must be numeric and finite; labels non-negative integers (whole-number floats are
accepted). Float ``y``/``y_train`` that are 2-D or not whole numbers are regression targets
(finite; the model's output width is their width, see :func:`~fedopt.data.arrays.
is_regression_target`). The file is read with ``allow_pickle=False``: object arrays are rejected.

Sizes taken from the file are bounded before anything is allocated for them: the arrays'
headers are read first and the file is refused if loading it would not fit in free memory;
client indices must be below the number of train rows (each client owns one); the number of
classes inferred from the labels (``max label + 1``) must not exceed
:data:`~fedopt.data.arrays.MAX_INFERRED_CLASSES` (100,000) unless ``data.num_classes`` is given.
Every error is one ValueError naming ``data.path``, ``data.<key>`` or the array.
"""
from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import numpy as np
import torch
from pydantic import BeforeValidator, Field

from fedopt.data.arrays import (build_from_arrays, check_features, check_index, check_targets,
                                infer_num_classes, is_regression_target, target_width)
from fedopt.data.assemble import assemble
from fedopt.data.checks import TestFraction, positive_int
from fedopt.data.dataset import FederatedDataset
from fedopt.data.partition import IidPartition, PartitionSpec
from fedopt.memory import available_memory_bytes
from fedopt.schema import ConfigError, PositiveInt, Schema, Str, path_like

DEFAULT_PLAIN_CLIENTS = 100
FEDERATED_ARRAYS = ("x_train", "y_train", "client_train", "x_test", "y_test", "client_test")


class NpzData(Schema):
    """``data: {name: npz, path: ...}``: a user's data set in one ``.npz`` file (layouts above)."""

    what = "data set 'npz'"
    name: Literal["npz"] = "npz"
    path: Annotated[Str, BeforeValidator(path_like)] = Field(
        ..., description="the .npz file (federated or plain layout)")
    num_clients: Optional[PositiveInt] = Field(
        None, description="null: max(client_train) + 1, or 100 for the plain layouts")
    partition: PartitionSpec = Field(default_factory=IidPartition,
                                     description="plain layouts: rows over clients")
    test_fraction: TestFraction = 0.2
    num_classes: Optional[PositiveInt] = Field(None, description="null: max label + 1")


def _layouts_hint() -> str:
    return (f"a .npz file (numpy.savez) holding the arrays {', '.join(FEDERATED_ARRAYS)}, "
            f"or x, y, or x_train, y_train, x_test, y_test")


def _read_header(fh: Any, version: tuple[int, int]) -> tuple[tuple[int, ...], np.dtype]:
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    else:  # (3, 0): utf-8 field names; numpy has no public reader for it
        shape, _, dtype = np.lib.format._read_array_header(fh, version)  # noqa: SLF001
    return tuple(int(d) for d in shape), np.dtype(dtype)


def inspect_npz(path: Any) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{array name: (shape, dtype)}`` of the ``.npz`` file at ``path``, read from the arrays'
    headers only (cheap: nothing is decompressed), so a run can be refused before it allocates.

    Raises ValueError naming ``data.path`` when ``path`` is missing, not a string/path, does
    not exist, is a directory or another non-file, cannot be read (permissions), is not a zip
    archive (e.g. a ``.npy`` file or text) or holds a member that is not a ``.npy`` array; and
    naming the array when it is an object array (those need pickle, which fedopt never loads)
    or of a non-numeric dtype (strings, structured, complex, dates). ``fedopt validate`` can
    call this to check ``data.path`` without loading the data.
    """
    if path is None:
        raise ConfigError(f"data.path is required for data set 'npz': the path to {_layouts_hint()}")
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"data.path must be a file path, got {type(path).__name__}")
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"data.path: no such file: {p} (expected {_layouts_hint()})")
    if p.is_dir():
        raise ConfigError(f"data.path: {p} is a directory; expected {_layouts_hint()}")
    if not p.is_file():
        raise ConfigError(f"data.path: {p} is not a regular file; expected {_layouts_hint()}")
    try:
        with open(p, "rb") as raw:
            magic = raw.read(6)
            if magic == np.lib.format.MAGIC_PREFIX:
                raise ConfigError(f"data.path: {p} holds a single array (.npy), not an .npz "
                                  f"archive; expected {_layouts_hint()}")
            raw.seek(0)
            if not zipfile.is_zipfile(raw):
                raise ConfigError(f"data.path: {p} is not an .npz (zip) archive; "
                                  f"expected {_layouts_hint()}")
            out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
            with zipfile.ZipFile(raw) as z:
                for info in z.infolist():
                    name = info.filename[:-4] if info.filename.endswith(".npy") else None
                    if name is None:
                        raise ConfigError(f"data.path: {p} holds {info.filename!r}, which is not "
                                          f"a .npy array; expected {_layouts_hint()}")
                    with z.open(info) as fh:
                        version = np.lib.format.read_magic(fh)
                        shape, dtype = _read_header(fh, version)
                    out[name] = (shape, dtype)
    except PermissionError as e:
        raise ConfigError(f"data.path: {p} cannot be read ({e.strerror})") from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        if isinstance(e, ValueError) and str(e).startswith("data.path"):
            raise
        raise ConfigError(f"data.path: {p} is not a readable .npz file ({e})") from e
    for name, (shape, dtype) in out.items():
        if dtype.hasobject:
            raise ConfigError(f"{name}: object array in {p}; fedopt loads .npz files without "
                              f"pickle, store numeric arrays")
        if dtype.kind not in "biuf":
            raise ConfigError(f"{name}: dtype {dtype} in {p} is not numeric (bool, integer or "
                              f"float)")
    return out


def npz_nbytes(arrays: dict[str, tuple[tuple[int, ...], np.dtype]]) -> int:
    """Bytes the arrays described by :func:`inspect_npz` take once loaded."""
    return sum(math.prod(shape) * dtype.itemsize for shape, dtype in arrays.values())


def load_npz_arrays(path: Any) -> dict[str, np.ndarray]:
    """All arrays of the file, read eagerly with ``allow_pickle=False``.

    First checks the file with :func:`inspect_npz` (same errors), then that loading it, plus
    the float32 copies made of its features, fits: ``2 × (bytes of the arrays)`` must not
    exceed the free memory, else ValueError naming ``data.path`` and the largest array (a
    compressed file can expand far beyond its own size).
    """

    meta = inspect_npz(path)
    p = Path(path).expanduser()
    need, free = 2 * npz_nbytes(meta), available_memory_bytes(torch.device("cpu"))
    if need > free:
        big = max(meta, key=lambda k: math.prod(meta[k][0]) * meta[k][1].itemsize)
        raise ConfigError(f"data.path: loading {p} needs about {need / 2**30:.1f} GiB "
                          f"({big}: shape {list(meta[big][0])}, {meta[big][1]}), more than the "
                          f"{free / 2**30:.1f} GiB of free memory")
    try:
        with np.load(p, allow_pickle=False) as f:
            return {key: f[key] for key in f.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise ConfigError(f"data.path: {p} is not a readable .npz file ({e})") from e


@dataclass(frozen=True)
class NpzFacts:
    """What :func:`check_npz` learned from the file's contents: the number of clients, the
    feature shape, the number of classes (output width), the rows, and the layout."""

    num_clients: int
    feature_shape: tuple[int, ...]
    num_classes: int
    rows: int
    federated: bool
    regression: bool


def check_npz(path: Any, *, seed: int = 0, num_clients: int | None = None,
              partition: str | dict | None = None, test_fraction: float = 0.2,
              num_classes: int | None = None) -> NpzFacts:
    """Every check :func:`build_npz` makes on the file and its contents, by the same code, so
    the same first error (ConfigError naming ``data.<key>`` or the array): the file is read
    (:func:`load_npz_arrays`: memory bound first); the federated layout's arrays are checked
    by the builder's own checks without building tensors; a plain layout is built as a run
    builds it (:func:`~fedopt.data.arrays.build_from_arrays`: its checks depend on the
    partition and the kind of targets, so they are not repeated here), then dropped."""
    arrays = load_npz_arrays(path)
    if "client_train" in arrays or "client_test" in arrays:
        if num_clients is not None:
            num_clients = positive_int(num_clients, "data.num_clients")
        x, _, _, k, classes, _, _, _ = _federated_arrays(arrays, num_clients, num_classes)
        return NpzFacts(k, tuple(x.shape[1:]), classes, int(x.shape[0]), True,
                        is_regression_target(arrays["y_train"]))
    data = _build_loaded(arrays, path, seed, num_clients, partition, test_fraction, num_classes)
    rows = int(data.x.shape[0] + data.x_test.shape[0])
    return NpzFacts(data.num_clients, tuple(data.feature_shape), data.num_classes, rows, False,
                    data.is_regression)


def build_npz(path: str | Path, seed: int, *, num_clients: int | None = None,
              partition: str | dict | None = None, test_fraction: float = 0.2,
              num_classes: int | None = None) -> FederatedDataset:
    """Load ``path`` in one of the layouts above. ``partition``/``test_fraction`` apply only to
    the plain layouts. ``num_clients``: for the federated layout ``None`` means
    ``max(client_train) + 1`` and a number is checked against the client indices; for the plain
    layouts ``None`` means 100. ``num_classes`` defaults to ``max label + 1``."""
    return _build_loaded(load_npz_arrays(path), path, seed, num_clients, partition,
                         test_fraction, num_classes)


def _build_loaded(arrays: dict[str, np.ndarray], path: Any, seed: int, num_clients: int | None,
                  partition: str | dict | None, test_fraction: float,
                  num_classes: int | None) -> FederatedDataset:
    """:func:`build_npz` on the file's loaded arrays."""
    name = f"npz:{Path(str(path)).name}"
    if num_clients is not None:
        num_clients = positive_int(num_clients, "data.num_clients")
    if "client_train" in arrays or "client_test" in arrays:
        return _federated(arrays, num_clients, num_classes, name)
    num_clients = DEFAULT_PLAIN_CLIENTS if num_clients is None else num_clients
    if "x" in arrays or "y" in arrays:
        _require(arrays, ("x", "y"), "plain layout")
        return build_from_arrays(arrays["x"], arrays["y"], num_clients, partition, seed,
                                 test_fraction, num_classes=num_classes, name=name)
    if "x_train" in arrays or "y_train" in arrays:
        _require(arrays, ("x_train", "y_train", "x_test", "y_test"), "plain layout with a test set")
        return build_from_arrays(arrays["x_train"], arrays["y_train"], num_clients, partition,
                                 seed, test_fraction, arrays["x_test"], arrays["y_test"],
                                 num_classes=num_classes, name=name)
    raise ConfigError(f"data.path: {path} has arrays {sorted(arrays)}; expected "
                      f"{', '.join(FEDERATED_ARRAYS)} (or x, y)")


def _require(arrays: dict[str, Any], names: tuple[str, ...], layout: str) -> None:
    for key in names:
        if key not in arrays:
            raise ConfigError(f"{key}: array missing from the .npz ({layout} needs "
                              f"{', '.join(names)}; found {', '.join(sorted(arrays))})")


def _federated(arrays: dict[str, np.ndarray], num_clients: int | None,
               num_classes: int | None, name: str) -> FederatedDataset:
    x, y, c, k, num_classes, xt, yt, ct = _federated_arrays(arrays, num_clients, num_classes)
    return assemble(x, y, c, k, num_classes=num_classes, name=name,
                    x_test=xt, y_test=yt, client_test=ct)


def _federated_arrays(arrays: dict[str, np.ndarray], num_clients: int | None,
                      num_classes: int | None) -> tuple:
    """The federated layout's arrays checked (the build's and :func:`check_npz`'s checks):
    ``(x, y, client, K, num_classes, x_test, y_test, client_test)``."""
    _require(arrays, FEDERATED_ARRAYS, "federated layout")
    x = check_features(arrays["x_train"], "x_train")
    xt = check_features(arrays["x_test"], "x_test")
    if xt.shape[1:] != x.shape[1:]:
        raise ConfigError(f"x_test has feature shape {xt.shape[1:]} but x_train has {x.shape[1:]}")
    regression = is_regression_target(arrays["y_train"])
    if regression:   # float targets: y_test too, whatever its values
        y = check_targets(arrays["y_train"], "y_train", x.shape[0], "x_train")
        yt = check_targets(arrays["y_test"], "y_test", xt.shape[0], "x_test")
    else:
        y = check_index(arrays["y_train"], "y_train", x.shape[0], "x_train", "labels")
        yt = check_index(arrays["y_test"], "y_test", xt.shape[0], "x_test", "labels")
    c = check_index(arrays["client_train"], "client_train", x.shape[0], "x_train",
                    "client indices")
    ct = check_index(arrays["client_test"], "client_test", xt.shape[0], "x_test",
                     "client indices")
    if c.size == 0:
        raise ConfigError("client_train is empty: the data set needs train rows")
    # every client 0..K-1 owns a train row, so K <= rows: bound before bincount allocates K
    rows = c.shape[0]
    if int(c.max()) >= rows:
        raise ConfigError(f"client_train: client index {int(c.max())} is not below the number "
                          f"of train rows ({rows}); clients are numbered 0..K-1 and each needs "
                          f"a train row")
    if num_clients is not None and num_clients > rows:
        raise ConfigError(f"data.num_clients: {num_clients} clients cannot each own a train row "
                          f"of the {rows} in x_train")
    k = int(c.max()) + 1 if num_clients is None else num_clients
    if int(c.max()) >= k:
        raise ConfigError(f"client_train: client index {int(c.max())} out of range for "
                          f"data.num_clients={k}")
    counts = np.bincount(c, minlength=k)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0)
        raise ConfigError(f"client_train: client {int(missing[0])} has no train rows "
                          f"(clients must be numbered 0..K-1 = 0..{k - 1} and each needs a "
                          f"train row; {missing.size} without)")
    if ct.size and int(ct.max()) >= k:
        raise ConfigError(f"client_test: client index {int(ct.max())} out of range: the train "
                          f"set has clients 0..{k - 1}")
    num_classes = (target_width(num_classes, {"y_train": y, "y_test": yt}) if regression
                   else infer_num_classes(num_classes, {"y_train": y, "y_test": yt}))
    return x, y, c, k, num_classes, xt, yt, ct
