"""Checks shared by the loaders that read a user's files from ``data.path`` (LEAF JSON, CIFAR
batches, image folders): the path is a readable folder, the expected files are there, and what
loading them will take fits in free memory. Every error is one :class:`ConfigError` naming
``data.path`` and saying which files were expected, raised before anything large is read."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from fedopt.memory import available_memory_bytes
from fedopt.schema import ConfigError


def data_dir(path: Any, expected: str, field: str = "data.path") -> Path:
    """``path`` as an existing, listable folder; ConfigError naming ``field`` and ``expected``
    (e.g. "a LEAF data folder holding train/ and test/ with .json files") otherwise."""
    if path is None:
        raise ConfigError(f"{field} is required: {expected}")
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"{field} must be a folder path, got {type(path).__name__}")
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"{field}: no such folder: {p} (expected {expected})")
    if not p.is_dir():
        raise ConfigError(f"{field}: {p} is not a folder (expected {expected})")
    if not os.access(p, os.R_OK | os.X_OK):
        raise ConfigError(f"{field}: folder {p} cannot be read (permissions)")
    return p


def regular_file(p: Path, expected: str, field: str = "data.path") -> int:
    """Size in bytes of ``p``, which must be a readable regular file; ConfigError naming
    ``field`` and ``expected`` otherwise."""
    if not p.exists():
        raise ConfigError(f"{field}: missing file {p} (expected {expected})")
    if not p.is_file():
        raise ConfigError(f"{field}: {p} is not a regular file (expected {expected})")
    if not os.access(p, os.R_OK):
        raise ConfigError(f"{field}: {p} cannot be read (permissions)")
    return p.stat().st_size


def check_fits(need: int, what: str, field: str = "data.path") -> None:
    """ConfigError naming ``field`` when ``need`` bytes exceed the free CPU memory
    (:func:`~fedopt.memory.available_memory_bytes`); ``what`` says what would need them."""
    free = available_memory_bytes(torch.device("cpu"))
    if need > free:
        raise ConfigError(f"{field}: {what} needs about {need / 2**30:.1f} GiB, more than the "
                          f"{free / 2**30:.1f} GiB of free memory")
