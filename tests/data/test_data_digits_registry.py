"""The bundled digits set (offline) and the data-spec registry."""
import numpy as np
import pytest
import torch

from fedopt.data import DATASET_KEYS, PARTITION_KEYS, build_dataset, resolve_dataset_spec
from fedopt.data.digits import DIGITS_PATH

# facts about scikit-learn's load_digits (UCI optdigits test set): 1797 rows, these class counts
CLASS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_digits_asset_ships_with_the_package():
    assert DIGITS_PATH.is_file() and DIGITS_PATH.stat().st_size < 200_000


def test_digits_loads_offline_with_all_rows():
    d = build_dataset({"name": "digits"}, seed=0)
    assert d.num_clients == 100 and d.num_classes == 10 and d.feature_shape == (64,)
    assert d.x.shape[0] + d.x_test.shape[0] == 1797
    labels = torch.cat([d.y, d.y_test])
    assert torch.bincount(labels, minlength=10).tolist() == CLASS_COUNTS
    x = torch.cat([d.x, d.x_test])
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.equal(x * 16, torch.round(x * 16))  # pixel counts 0..16 scaled by 1/16


def test_digits_images_match_flat_rows():
    flat = build_dataset({"name": "digits", "num_clients": 10}, seed=4)
    img = build_dataset({"name": "digits", "num_clients": 10, "flatten": False}, seed=4)
    assert img.feature_shape == (1, 8, 8)
    assert torch.equal(img.x.reshape(-1, 64), flat.x) and torch.equal(img.y, flat.y)


def test_digits_partition_from_spec():
    d = build_dataset({"name": "digits", "num_clients": 20,
                       "partition": {"name": "shards", "shards_per_client": 1}}, seed=0)
    # 20 shards of ~90 rows over label-sorted rows: each spans at most 2 labels
    assert int((d.label_counts() + d.label_counts("test") > 0).sum(1).max()) <= 2


def test_test_fraction_zero_and_bad_values():
    d = build_dataset({"name": "digits", "num_clients": 10, "test_fraction": 0.0}, seed=0)
    assert d.x_test.shape == (0, 64) and d.x.shape[0] == 1797
    with pytest.raises(ValueError, match=r"data\.test_fraction"):
        build_dataset({"name": "digits", "test_fraction": 1.0}, seed=0)
    # at least one train row per client even when the fraction would take them all
    d = build_dataset({"name": "digits", "num_clients": 1797, "test_fraction": 0.9}, seed=0)
    assert (d.counts == 1).all() and d.x_test.shape[0] == 0


def test_resolve_fills_defaults_and_rejects_unknowns():
    full = resolve_dataset_spec({"name": "digits", "partition": "dirichlet"})
    assert full == {"name": "digits", "num_clients": 100, "test_fraction": 0.2, "flatten": True,
                    "partition": {"name": "dirichlet", "alpha": 0.5}}
    assert set(DATASET_KEYS) == {"synthetic", "digits", "npz", "regression", "leaf", "cifar10",
                                 "cifar100", "image_folder"}
    assert DATASET_KEYS["npz"]["path"] is None and "dirichlet" in PARTITION_KEYS
    with pytest.raises(ValueError, match=r"data\.name"):
        resolve_dataset_spec({"name": "mnist"})
    with pytest.raises(ValueError, match=r"data\.name"):
        resolve_dataset_spec({"num_clients": 3})
    with pytest.raises(ValueError, match=r"data\.flaten"):
        resolve_dataset_spec({"name": "digits", "flaten": False})
    with pytest.raises(ValueError, match=r"data\.partition\.alpha"):
        build_dataset({"name": "digits", "partition": {"name": "dirichlet", "alpha": -1}}, 0)
    with pytest.raises(ValueError, match=r"data\.num_clients"):
        build_dataset({"name": "digits", "num_clients": 0}, 0)
    with pytest.raises(ValueError, match="seed"):
        build_dataset({"name": "digits"}, -1)


def test_defaults_table_is_not_mutated_by_resolution():
    full = resolve_dataset_spec({"name": "synthetic"})
    full["alpha"] = 99.0
    assert DATASET_KEYS["synthetic"]["alpha"] == 1.0
    assert np.isclose(resolve_dataset_spec({"name": "synthetic"})["alpha"], 1.0)
