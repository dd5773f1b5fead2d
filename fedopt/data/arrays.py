"""A user's own arrays (numpy or torch) as a :class:`FederatedDataset`, and the validators that
every array-based loader (``npz`` too) shares. Each error names the offending array."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fedopt.data.assemble import assemble, assign_test_clients
from fedopt.data.checks import fraction, positive_int, seed_streams
from fedopt.data.dataset import FederatedDataset
from fedopt.data.partition import partition as partition_rows
from fedopt.data.partition import resolve_partition
from fedopt.schema import ConfigError

ArrayLike = Any  # numpy array, torch tensor, or anything np.asarray accepts


def to_numpy(a: ArrayLike, field: str) -> np.ndarray:
    """``a`` as a numpy array (torch tensors are detached and moved to CPU)."""
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    try:
        return np.asarray(a)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{field}: cannot be read as an array ({e})") from e


def check_features(x: ArrayLike, field: str) -> np.ndarray:
    """Numeric ``[rows, *feature_shape]`` features without NaN/inf, as a float32 copy.

    Raises ValueError naming ``field`` for a non-numeric dtype (object, string, complex), fewer
    than 2 dimensions, a feature dimension of size 0, NaN/inf, or values beyond float32's range.
    """
    x = to_numpy(x, field)
    if x.dtype.kind not in "biuf":
        raise ConfigError(f"{field}: must be numeric (bool, integer or float), got dtype {x.dtype}")
    if x.ndim < 2:
        raise ConfigError(f"{field}: must have shape [rows, *feature_shape] (at least 2 dims), "
                          f"got shape {x.shape}")
    if 0 in x.shape[1:]:
        raise ConfigError(f"{field}: feature shape {x.shape[1:]} has a dimension of size 0")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ConfigError(f"{field} contains NaN or inf values")
    out = x.astype(np.float32)
    if not np.isfinite(out).all():
        raise ConfigError(f"{field} has values too large for float32")
    return out


def check_index(a: ArrayLike, field: str, rows: int, rows_field: str, what: str) -> np.ndarray:
    """A 1-D array of non-negative integers (whole floats allowed) with ``rows`` entries, as int64.

    ``what`` names the content in messages ("labels", "client indices"). Raises ValueError naming
    ``field`` for another shape or length, a non-integer dtype or value (NaN, inf, 0.5), a
    negative entry, or an entry that does not fit in int64 (checked before casting, so a
    ``uint64`` or a float such as 1e300 cannot wrap around).
    """
    a = to_numpy(a, field)
    if a.ndim != 1:
        raise ConfigError(f"{field}: must be 1-D (one entry per row), got shape {a.shape}")
    if a.shape[0] != rows:
        raise ConfigError(f"{field} has {a.shape[0]} rows but {rows_field} has {rows}")
    if a.dtype.kind == "f":
        if not np.isfinite(a).all() or not (a == np.round(a)).all():
            bad = a[~np.isfinite(a) | (a != np.round(a))][0]
            raise ConfigError(f"{field}: {what} must be integers, found {bad!r}")
    elif a.dtype.kind not in "iub":
        raise ConfigError(f"{field}: {what} must be integers, got dtype {a.dtype}")
    if a.size and a.min() < 0:
        raise ConfigError(f"{field}: {what} must be non-negative, found {a.min()!r}")
    if a.size and a.dtype.kind in "uf" and a.max() >= 2.0 ** 63:
        raise ConfigError(f"{field}: {what} must be below 2**63, found {a.max()!r}")
    return a.astype(np.int64)


#: the largest number of classes fedopt infers from labels (``max label + 1``); a data set with
#: more classes must say so with ``data.num_classes`` (a stray label such as 10**9 would
#: otherwise size the model's output layer for a billion classes).
MAX_INFERRED_CLASSES = 100_000


def infer_num_classes(num_classes: int | None, labels: dict[str, np.ndarray]) -> int:
    """``num_classes`` if given (checked against the labels), else ``max label + 1``.

    ``labels`` maps an array's name to its checked int64 labels. Raises ValueError naming the
    array and ``data.num_classes`` when a label is ``>= num_classes``, or, when ``num_classes``
    is not given, when ``max label + 1`` exceeds :data:`MAX_INFERRED_CLASSES` (then the
    number of classes must be given explicitly).
    """
    if num_classes is None:
        top, where = -1, ""
        for field, v in labels.items():
            if v.size and int(v.max()) > top:
                top, where = int(v.max()), field
        if top + 1 > MAX_INFERRED_CLASSES:
            raise ConfigError(f"{where}: label {top} would make {top + 1} classes (max label + 1); "
                              f"more than {MAX_INFERRED_CLASSES:,} classes are only accepted when "
                              f"data.num_classes gives the number of classes")
        return max(top + 1, 1)
    num_classes = positive_int(num_classes, "data.num_classes")
    for field, v in labels.items():
        if v.size and int(v.max()) >= num_classes:
            raise ConfigError(f"{field}: label {int(v.max())} >= data.num_classes={num_classes} "
                              f"(labels must lie in 0..{num_classes - 1})")
    return num_classes


def is_regression_target(y: ArrayLike) -> bool:
    """Float targets are regression targets when 2-D ``[rows, p]`` or when one finite value is
    not a whole number; 1-D whole-number floats stay class labels (as they always were)."""
    a = to_numpy(y, "y")
    if a.dtype.kind != "f":
        return False
    finite = a[np.isfinite(a)]
    return a.ndim == 2 or bool((finite != np.round(finite)).any())


def check_targets(y: ArrayLike, field: str, rows: int, rows_field: str) -> np.ndarray:
    """Regression targets ``[rows]`` or ``[rows, p]``, finite, as float32; ConfigError naming
    ``field`` otherwise."""
    a = to_numpy(y, field)
    if a.dtype.kind not in "iuf" or a.ndim not in (1, 2) or (a.ndim == 2 and a.shape[1] == 0):
        raise ConfigError(f"{field}: regression targets must be numeric [rows] or [rows, p], "
                          f"got dtype {a.dtype}, shape {a.shape}")
    if a.shape[0] != rows:
        raise ConfigError(f"{field} has {a.shape[0]} rows but {rows_field} has {rows}")
    out = a.astype(np.float32)
    if not np.isfinite(out).all():
        raise ConfigError(f"{field} contains NaN or inf values (or values too large for float32)")
    return out


def target_width(num_classes: int | None, targets: dict[str, np.ndarray]) -> int:
    """The model's output width for regression targets (p, or 1 for [rows]); ``num_classes``
    must equal it when given. ConfigError naming the array whose width differs."""
    shapes = {k: v.shape[1:] for k, v in targets.items()}
    first = next(iter(shapes.values()))
    for k, s in shapes.items():
        if s != first:
            raise ConfigError(f"{k}: target shape {s} differs from {next(iter(shapes))}'s {first}")
    width = first[0] if first else 1
    if num_classes is not None and num_classes != width:
        raise ConfigError(f"data.num_classes: {num_classes} given, but the regression targets "
                          f"have width {width} (the model's output width)")
    return width


def build_from_arrays(x: ArrayLike, y: ArrayLike, num_clients: int,
                      partition: str | dict | None, seed: int, test_fraction: float = 0.2,
                      x_test: ArrayLike | None = None, y_test: ArrayLike | None = None, *,
                      num_classes: int | None = None, name: str = "arrays") -> FederatedDataset:
    """Partition a user's own ``(x, y)`` over ``num_clients`` clients.

    ``partition`` is a name (``"iid"``, ``"dirichlet"``, ``"shards"``, ``"power_law"``) or a dict
    such as ``{"name": "dirichlet", "alpha": 0.5}``. Without ``x_test`` each client's rows are
    split ``test_fraction`` to test (see :mod:`fedopt.data.assemble`); with ``x_test``/``y_test``
    ``test_fraction`` is ignored and each test row goes to a client that holds its class (with
    probability proportional to that client's rows of the class). Stages use independent streams
    spawned from ``seed``. ``num_classes`` defaults to ``max label + 1``.

    Float ``y`` that are 2-D or not whole numbers are regression targets
    (:func:`is_regression_target`): ``num_classes`` is their width, the partition must be
    ``iid`` or ``power_law`` (the others split by class) and each test row goes to a uniformly
    random client.
    """
    part_spec = resolve_partition(partition)
    num_clients = positive_int(num_clients, "data.num_clients")
    fraction(test_fraction, "data.test_fraction")
    rng_part, rng_split = seed_streams(seed, 2)
    xs = check_features(x, "x")
    if is_regression_target(y):
        return _regression_from_arrays(xs, y, x_test, y_test, num_clients, part_spec,
                                       num_classes, name, test_fraction, rng_part, rng_split)
    ys = check_index(y, "y", xs.shape[0], "x", "labels")
    labels = {"y": ys}
    xt = _test_features(xs, x_test, y_test)
    if xt is not None:
        yt = check_index(y_test, "y_test", xt.shape[0], "x_test", "labels")
        labels["y_test"] = yt
    num_classes = infer_num_classes(num_classes, labels)
    client = partition_rows(ys, num_clients, part_spec, rng_part)
    if x_test is None:
        return assemble(xs, ys, client, num_clients, num_classes=num_classes, name=name,
                        test_fraction=test_fraction, rng=rng_split)
    client_test = assign_test_clients(ys, client, yt, num_clients, rng_split)
    return assemble(xs, ys, client, num_clients, num_classes=num_classes, name=name,
                    x_test=xt, y_test=yt, client_test=client_test)


def _test_features(xs: np.ndarray, x_test: ArrayLike | None,
                   y_test: ArrayLike | None) -> np.ndarray | None:
    """The checked test features (None without a test set): ConfigError unless x_test and
    y_test come together and x_test has x's feature shape."""
    if (x_test is None) != (y_test is None):
        raise ConfigError("x_test and y_test must be given together")
    if x_test is None:
        return None
    xt = check_features(x_test, "x_test")
    if xt.shape[1:] != xs.shape[1:]:
        raise ConfigError(f"x_test has feature shape {xt.shape[1:]} but x has {xs.shape[1:]}")
    return xt


def _regression_from_arrays(xs: np.ndarray, y: ArrayLike, x_test: ArrayLike | None,
                            y_test: ArrayLike | None, num_clients: int, part_spec: dict,
                            num_classes: int | None, name: str, test_fraction: float,
                            rng_part: np.random.Generator,
                            rng_split: np.random.Generator) -> FederatedDataset:
    if part_spec["name"] not in ("iid", "power_law"):
        raise ConfigError(f"data.partition: {part_spec['name']!r} splits by class label; "
                          f"regression targets (float y) take 'iid' or 'power_law'")
    ys = check_targets(y, "y", xs.shape[0], "x")
    targets = {"y": ys}
    xt = _test_features(xs, x_test, y_test)
    if xt is not None:
        targets["y_test"] = yt = check_targets(y_test, "y_test", xt.shape[0], "x_test")
    width = target_width(num_classes, targets)
    client = partition_rows(np.zeros(xs.shape[0], dtype=np.int64), num_clients, part_spec,
                            rng_part)
    if x_test is None:
        return assemble(xs, ys, client, num_clients, num_classes=width, name=name,
                        test_fraction=test_fraction, rng=rng_split)
    client_test = rng_split.integers(num_clients, size=xt.shape[0]).astype(np.int64)
    return assemble(xs, ys, client, num_clients, num_classes=width, name=name,
                    x_test=xt, y_test=yt, client_test=client_test)
