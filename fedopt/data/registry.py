"""``build_dataset(spec, seed)``: the config's ``data:`` section to a :class:`FederatedDataset`.

Each data set's schema lives beside its builder (:class:`~fedopt.data.synthetic.SyntheticData`,
:class:`~fedopt.data.digits.DigitsData`, :class:`~fedopt.data.npz.NpzData`); :data:`DataSpec`
is their union on ``name`` and ``DATASET_KEYS[name]`` lists every key a builder accepts (besides
``name``) with its default (``None`` where the default is decided by the data, or, for ``npz``'s
``path``, where the builder requires a value). :func:`resolve_dataset_spec` checks a spec and
fills defaults, and :func:`check_dataset_spec` runs every check of the builder without
building the data set's tensors (row counts, Synthetic's memory bound, an npz file's contents
checked by the builder's own validators; for LEAF, CIFAR and image folders the expected files
are found and their sizes bounded, without parsing them) and says what is known before building: the number of
clients, the feature shape and the number of classes. The config validator calls them, so
``fedopt validate`` refuses what ``fedopt run`` would, without building the data.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from fedopt.data.cifar import Cifar10Data, Cifar100Data, build_cifar10, build_cifar100, cifar_files
from fedopt.data.dataset import FederatedDataset
from fedopt.data.digits import DIGITS_CLASSES, DIGITS_ROWS, DigitsData, build_digits
from fedopt.data.image_folder import ImageFolderData, build_image_folder, check_image_folder
from fedopt.data.leaf import LeafData, build_leaf, find_leaf_files, leaf_facts, leaf_token_vocab
from fedopt.data.npz import NpzData, build_npz, check_npz
from fedopt.data.partition import check_partition_rows
from fedopt.data.regression import RegressionData, build_regression, check_regression_memory
from fedopt.data.synthetic import SyntheticData, build_synthetic, check_synthetic_memory
from fedopt.schema import ConfigError, defaults_table, named_union, parse  # noqa: F401

#: the built-in data sets' schemas
DATASET_SCHEMAS = [SyntheticData, DigitsData, NpzData, RegressionData, LeafData, Cifar10Data,
                   Cifar100Data, ImageFolderData]
#: a ``data:`` section: one of the data sets, selected by its ``name`` (no default)
DataSpec = named_union(DATASET_SCHEMAS)
DATASET_KEYS: dict[str, dict[str, Any]] = defaults_table(DATASET_SCHEMAS)

_BUILDERS: dict[str, Callable[..., FederatedDataset]] = {
    "synthetic": build_synthetic,
    "digits": build_digits,
    "npz": build_npz,
    "regression": build_regression,
    "leaf": build_leaf,
    "cifar10": build_cifar10,
    "cifar100": build_cifar100,
    "image_folder": build_image_folder,
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
    #: float (regression) targets; None: known only after building
    regression: bool | None = None
    #: features are token indices ``0..token_vocab-1`` (LEAF text); None: not token indices
    token_vocab: int | None = None


def check_dataset_spec(full: dict[str, Any], seed: int = 0) -> DataFacts:
    """Every check of the builder of a resolved spec (:func:`resolve_dataset_spec`: its values
    are already checked by the schema) that can be made without building the data set's
    tensors; ConfigError naming ``data.<key>`` (or an npz file's array). ``seed`` is the run's:
    Synthetic's rows per client are drawn (as the builder draws them) to bound its memory.
    An npz file is read and its contents checked by the builder's own code
    (:func:`~fedopt.data.npz.check_npz`), so the facts are those of the data: the number of
    clients, the feature shape and the number of classes."""
    name = full["name"]
    if name == "synthetic":
        check_synthetic_memory(seed, {k: v for k, v in full.items() if k != "name"})
        return DataFacts(full["num_clients"], (full["num_features"],), full["num_classes"], False)
    if name == "regression":
        check_regression_memory(parse(RegressionData, full, "data"))
        return DataFacts(full["num_clients"], (full["num_features"],), full["num_targets"], True)
    if name == "digits":
        n = full["num_clients"]
        check_partition_rows(full["partition"], DIGITS_ROWS, n)
        return DataFacts(n, (64,) if full["flatten"] else (1, 8, 8), DIGITS_CLASSES, False)
    if name == "npz":
        facts = check_npz(full["path"], seed=seed, num_clients=full["num_clients"],
                          partition=full["partition"], test_fraction=full["test_fraction"],
                          num_classes=full["num_classes"])
        return DataFacts(facts.num_clients, facts.feature_shape, facts.num_classes,
                         facts.regression)
    if name == "leaf":   # the files are listed and sized, not parsed
        find_leaf_files(full["path"], full["task"])
        shape, classes = leaf_facts(full["task"], full["seq_len"], full["max_words"])
        return DataFacts(None, shape, classes, False,
                         leaf_token_vocab(full["task"], full["vocab_size"]))
    if name in ("cifar10", "cifar100"):   # the files are found and sized, not unpickled
        cifar_files(full["path"], name)
        classes = 10 if name == "cifar10" else (100 if full["labels"] == "fine" else 20)
        return DataFacts(full["num_clients"], (3, 32, 32), classes, False)
    if name == "image_folder":   # the folders are listed, no image is decoded
        rows, shape, classes = check_image_folder(full["path"], full["test_path"],
                                                  full["image_size"], full["grayscale"])
        check_partition_rows(full["partition"], rows, full["num_clients"])
        return DataFacts(full["num_clients"], shape, classes, False)
    return DataFacts(None, None, None)


def build_dataset(spec: dict[str, Any], seed: int) -> FederatedDataset:
    """Build the data set named by ``spec["name"]``; the same ``(spec, seed)`` gives identical
    tensors. Raises ConfigError naming the field; each builder makes the checks of
    :func:`check_dataset_spec` itself (synthetic through :func:`check_synthetic`, partitions
    through :func:`resolve_partition`), so validation and building agree."""
    full = resolve_dataset_spec(spec)
    kwargs = {k: v for k, v in full.items() if k != "name"}
    return _BUILDERS[full["name"]](seed=seed, **kwargs)
