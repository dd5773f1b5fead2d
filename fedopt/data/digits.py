"""The bundled real data set: 1797 8x8 handwritten digits (UCI optdigits via scikit-learn),
shipped as ``fedopt/data/assets/digits.npz`` so it works offline (provenance and license in
``assets/README.md``).

Pixels (counts 0..16) are scaled to ``x / 16 ∈ [0, 1]``. ``flatten=True`` gives 64 features,
``flatten=False`` gives ``(1, 8, 8)`` images for the CNN. Rows are partitioned over clients and
split per client like any array data set (:func:`fedopt.data.build_from_arrays`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from fedopt.data.arrays import build_from_arrays
from fedopt.data.checks import TestFraction, boolean
from fedopt.data.dataset import FederatedDataset
from fedopt.data.partition import IidPartition, PartitionSpec
from fedopt.schema import Bool, PositiveInt, Schema

DIGITS_PATH = Path(__file__).with_name("assets") / "digits.npz"
DIGITS_ROWS = 1797
DIGITS_CLASSES = 10


class DigitsData(Schema):
    """``data: {name: digits, ...}``: the bundled 8x8 digits, partitioned over clients."""

    what = "data set 'digits'"
    name: Literal["digits"] = "digits"
    num_clients: PositiveInt = 100
    partition: PartitionSpec = Field(default_factory=IidPartition)
    test_fraction: TestFraction = 0.2
    flatten: Bool = Field(True, description="64 features (true) or (1, 8, 8) images (false)")


def load_digits_arrays(flatten: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: float32 pixels in [0, 1], shape ``[1797, 64]`` or ``[1797, 1, 8, 8]``;
    int64 labels 0..9."""
    flatten = boolean(flatten, "data.flatten")
    with np.load(DIGITS_PATH, allow_pickle=False) as f:
        x, y = f["x"], f["y"]
    x = x.astype(np.float32) / 16.0
    x = x.reshape(x.shape[0], 64) if flatten else x.reshape(x.shape[0], 1, 8, 8)
    return x, y.astype(np.int64)


def build_digits(seed: int, *, num_clients: int = 100, partition: str | dict | None = None,
                 test_fraction: float = 0.2, flatten: bool = True) -> FederatedDataset:
    """The digits rows partitioned over ``num_clients`` clients (default iid)."""
    x, y = load_digits_arrays(flatten)
    return build_from_arrays(x, y, num_clients, partition, seed, test_fraction,
                             num_classes=DIGITS_CLASSES, name="digits")
