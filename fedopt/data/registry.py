"""``build_dataset(spec, seed)``: the config's ``data:`` section to a :class:`FederatedDataset`.

Each data set's schema lives beside its builder (:class:`~fedopt.data.synthetic.SyntheticData`,
:class:`~fedopt.data.digits.DigitsData`, :class:`~fedopt.data.npz.NpzData`); :data:`DataSpec`
is their union on ``name`` and ``DATASET_KEYS[name]`` lists every key a builder accepts (besides
``name``) with its default (``None`` where the default is decided by the data, or, for ``npz``'s
``path``, where the builder requires a value). :func:`resolve_dataset_spec` checks a spec and
fills defaults, and :func:`check_dataset_spec` runs every check of the builder that needs no
data (row counts known in advance, the npz file's existence and layout) and says what is known
before building: the number of clients, the feature shape and the number of classes. The config
validator calls them, so ``fedopt validate`` refuses what ``fedopt run`` would, without building
the data.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fedopt.data.dataset import FederatedDataset
from fedopt.data.digits import DIGITS_CLASSES, DIGITS_ROWS, DigitsData, build_digits
from fedopt.data.npz import DEFAULT_PLAIN_CLIENTS, NpzData, build_npz
from fedopt.data.partition import check_partition_rows
from fedopt.data.regression import RegressionData, build_regression
from fedopt.data.synthetic import SyntheticData, build_synthetic
from fedopt.schema import ConfigError, defaults_table, named_union, parse

#: the built-in data sets' schemas
DATASET_SCHEMAS = [SyntheticData, DigitsData, NpzData, RegressionData]
#: a ``data:`` section: one of the data sets, selected by its ``name`` (no default)
DataSpec = named_union(DATASET_SCHEMAS)
DATASET_KEYS: dict[str, dict[str, Any]] = defaults_table(DATASET_SCHEMAS)

_BUILDERS: dict[str, Callable[..., FederatedDataset]] = {
    "synthetic": build_synthetic,
    "digits": build_digits,
    "npz": build_npz,
    "regression": build_regression,
}


def resolve_dataset_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A full copy of ``spec`` with defaults filled and ``partition`` normalised to a dict.

    Raises ConfigError naming ``data.name`` (missing/unknown), ``data.<key>`` (unknown key, a
    bad value, or ``data.path`` missing for ``npz``) or ``data.partition.<key>``.
    """
    return parse(DataSpec, spec, "data").model_dump()


@dataclass(frozen=True)
class DataFacts:
    """What a data spec fixes before any data is built (None: known only after building)."""

    num_clients: int | None
    feature_shape: tuple[int, ...] | None
    num_classes: int | None


def check_dataset_spec(full: dict[str, Any]) -> DataFacts:
    """Every check of the builder of a resolved spec (:func:`resolve_dataset_spec`: its values
    are already checked by the schema) that needs no data; ConfigError naming ``data.<key>``. Cheap for any number of clients: an npz file is
    only opened to read its member names and array headers (and ``client_train`` when the
    number of clients is not given)."""
    name = full["name"]
    if name == "synthetic":
        return DataFacts(full["num_clients"], (full["num_features"],), full["num_classes"])
    if name == "regression":
        return DataFacts(full["num_clients"], (full["num_features"],), full["num_targets"])
    if name == "digits":
        n = full["num_clients"]
        check_partition_rows(full["partition"], DIGITS_ROWS, n)
        return DataFacts(n, (64,) if full["flatten"] else (1, 8, 8), DIGITS_CLASSES)
    if name == "npz":
        n = full["num_clients"]
        classes = full["num_classes"]
        members, shape, rows, clients = _npz_outline(full["path"], n is None)
        federated = "client_train" in members or "client_test" in members
        if n is None:
            n = clients if federated else DEFAULT_PLAIN_CLIENTS
        if not federated and rows is not None:
            check_partition_rows(full["partition"], rows, n)
        return DataFacts(n, shape, classes)
    return DataFacts(None, None, None)


def _npz_outline(path: Any, need_clients: bool
                 ) -> tuple[set[str], tuple[int, ...] | None, int | None, int | None]:
    """Array names of an .npz file, the feature shape and row count of its train features (from
    the array header) and, when asked, ``max(client_train) + 1`` (None when that array is unusable: the
    builder then names the problem)."""
    if not isinstance(path, (str, Path)):
        raise ConfigError(f"data.path must be a file path, got {type(path).__name__}")
    p = Path(path).expanduser()
    if p.is_dir():
        raise ConfigError(f"data.path: {p} is a directory; expected a .npz file")
    if not p.is_file():
        raise ConfigError(f"data.path: no such file: {p}")
    try:
        with zipfile.ZipFile(p) as z:
            members = {m[:-4] for m in z.namelist() if m.endswith(".npy")}
            shape = rows = None
            for key in ("x_train", "x"):
                if key in members:
                    with z.open(f"{key}.npy") as f:
                        version = np.lib.format.read_magic(f)
                        header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                  else np.lib.format.read_array_header_2_0)
                        full_shape, _, dtype = header(f)
                    if len(full_shape) >= 2 and not dtype.hasobject:   # else: the builder says
                        shape, rows = tuple(full_shape[1:]), int(full_shape[0])
                    break
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise ConfigError(f"data.path: {p} is not an .npz (zip) archive of arrays ({e})") from None
    clients = None
    if need_clients and "client_train" in members:
        try:
            with np.load(p, allow_pickle=False) as f:
                c = f["client_train"]
            if c.ndim == 1 and c.size and c.dtype.kind in "iu" and c.min() >= 0:
                clients = int(c.max()) + 1
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            pass
    return members, shape, rows, clients


def build_dataset(spec: dict[str, Any], seed: int) -> FederatedDataset:
    """Build the data set named by ``spec["name"]``; the same ``(spec, seed)`` gives identical
    tensors. Raises ConfigError naming the field; each builder makes the checks of
    :func:`check_dataset_spec` itself (synthetic through :func:`check_synthetic`, partitions
    through :func:`resolve_partition`), so validation and building agree."""
    full = resolve_dataset_spec(spec)
    kwargs = {k: v for k, v in full.items() if k != "name"}
    return _BUILDERS[full["name"]](seed=seed, **kwargs)
