"""Federated data sets as flat tensors (see :class:`FederatedDataset`), their builders and
partitions.

    data = build_dataset({"name": "synthetic", "alpha": 1, "beta": 1}, seed=0)
    data = build_dataset({"name": "digits", "partition": {"name": "dirichlet", "alpha": 0.5}}, 0)
    data = build_from_arrays(x, y, num_clients=50, partition="shards", seed=0)
    data = build_dataset({"name": "leaf", "task": "femnist", "path": "leaf/data/femnist/data"}, 0)
"""
from fedopt.data.arrays import build_from_arrays
from fedopt.data.cifar import build_cifar
from fedopt.data.dataset import FederatedDataset
from fedopt.data.digits import build_digits, load_digits_arrays
from fedopt.data.image_folder import build_image_folder
from fedopt.data.leaf import build_leaf
from fedopt.data.npz import build_npz
from fedopt.data.partition import PARTITION_KEYS, PARTITIONS, partition, resolve_partition
from fedopt.data.registry import DATASET_KEYS, build_dataset, resolve_dataset_spec
from fedopt.data.synthetic import SyntheticModel, build_synthetic, synthetic_with_model

__all__ = [
    "DATASET_KEYS",
    "PARTITION_KEYS",
    "PARTITIONS",
    "FederatedDataset",
    "SyntheticModel",
    "build_dataset",
    "build_cifar",
    "build_digits",
    "build_from_arrays",
    "build_image_folder",
    "build_leaf",
    "build_npz",
    "build_synthetic",
    "load_digits_arrays",
    "partition",
    "resolve_dataset_spec",
    "resolve_partition",
    "synthetic_with_model",
]
