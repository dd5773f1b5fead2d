"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009) from the "python version" files a user already
has, partitioned over clients with the usual partitions (``iid``, ``dirichlet``, ``shards``,
``power_law``; :mod:`fedopt.data.partition`).

``data.path`` is the extracted folder (``cifar-10-batches-py`` or ``cifar-100-python``, or the
folder holding it):

* ``cifar10``: ``data_batch_1`` … ``data_batch_5`` (train) and ``test_batch``; each a pickled
  dict with ``b"data"``, a uint8 array ``[N, 3072]`` (per row: 1024 red, 1024 green, 1024 blue
  values of a 32×32 image, row-major), and ``b"labels"``, ``N`` ints in ``0..9``.
* ``cifar100``: ``train`` and ``test``, with ``b"data"`` as above and ``b"fine_labels"``
  (``0..99``) and ``b"coarse_labels"`` (``0..19``); ``data.labels`` picks one.

Features are ``[3, 32, 32]`` float32 ``x / 255`` in ``[0, 1]``. The test file's rows go to the
clients holding their class (:func:`~fedopt.data.arrays.build_from_arrays` with a test set).

Why a restricted unpickler: these files are pickles, and ``pickle.load`` runs whatever
callable a file names (a crafted "data_batch_1" could run any command). :func:`load_batch`
never imports a class a file asks for: it resolves only the few names the real files use —
numpy's array reconstructor, ``ndarray`` and ``dtype`` (plain numeric dtypes only), numpy's
``frombuffer`` helper (protocol 5) and ``_codecs.encode`` (bytes pickled by Python 3) — each
wrapped so it builds arrays only from the file's own bytes, and refuses every other global
with a ConfigError naming the file. Lists, dicts, ints and byte strings need no globals.
``BUILD`` (setting an object's state) is accepted only on arrays, dict keys must be byte
strings, strings or ints, and sets are refused (hashing nested shared tuples takes time
exponential in their depth). The reader is the pure-Python
unpickler, whose memo is a dict: the C one grows a table to the largest memo index a file
names, so 9 bytes could allocate gigabytes. fedopt itself never writes pickle; this reads the
user's existing files.

Sizes are bounded before they are allocated: the files' total size ``S`` is known from the
folder, and loading is refused unless ``14 S`` (the arrays, their float32 copies and the
partition's reordering) fits in free memory.
"""
from __future__ import annotations

import codecs
import io
import pickle
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BeforeValidator, Field

from fedopt.data.arrays import build_from_arrays
from fedopt.data.dataset import FederatedDataset
from fedopt.data.files import check_fits, data_dir, regular_file
from fedopt.data.partition import IidPartition, PartitionSpec
from fedopt.schema import ConfigError, PositiveInt, Schema, Str, path_like

IMAGE_SHAPE = (3, 32, 32)
#: train files, test file, label key and number of classes of each data set (label choice)
CIFAR_LAYOUTS: dict[str, dict[str, Any]] = {
    "cifar10": {"folder": "cifar-10-batches-py",
                "train": [f"data_batch_{i}" for i in range(1, 6)], "test": "test_batch",
                "labels": {"fine": (b"labels", 10)}},
    "cifar100": {"folder": "cifar-100-python", "train": ["train"], "test": "test",
                 "labels": {"fine": (b"fine_labels", 100), "coarse": (b"coarse_labels", 20)}},
}
#: loading needs at most this many times the files' size (uint8 arrays + float32 copies)
LOAD_EXPANSION = 14


class _CifarBase(Schema):
    path: Annotated[Str, BeforeValidator(path_like)] = Field(
        ..., description="the extracted CIFAR python folder (or the folder holding it)")
    num_clients: PositiveInt = 100
    partition: PartitionSpec = Field(default_factory=IidPartition,
                                     description="train rows over clients")


class Cifar10Data(_CifarBase):
    """``data: {name: cifar10, path: ...}``: CIFAR-10's python batches."""

    what = "data set 'cifar10'"
    name: Literal["cifar10"] = "cifar10"


class Cifar100Data(_CifarBase):
    """``data: {name: cifar100, path: ...}``: CIFAR-100's python files."""

    what = "data set 'cifar100'"
    name: Literal["cifar100"] = "cifar100"
    labels: Literal["fine", "coarse"] = Field("fine", description="100 fine or 20 coarse "
                                                                   "classes")


def _expected(name: str) -> str:
    lay = CIFAR_LAYOUTS[name]
    return (f"the {lay['folder']} folder of the {name} python version holding "
            f"{', '.join(lay['train'] + [lay['test']])}")


def cifar_files(path: Any, name: str) -> tuple[list[Path], Path, int]:
    """``(train files, test file, total bytes)`` under ``path`` (or ``path/<folder>``);
    ConfigError naming ``data.path`` and the expected files when one is missing or loading
    them would not fit in free memory. Cheap: nothing is read (``fedopt validate`` runs it)."""
    lay = CIFAR_LAYOUTS[name]
    root = data_dir(path, _expected(name))
    if not (root / lay["test"]).exists() and (root / lay["folder"]).is_dir():
        root = root / lay["folder"]
    train = [root / f for f in lay["train"]]
    test = root / lay["test"]
    total = sum(regular_file(p, _expected(name)) for p in [*train, test])
    check_fits(LOAD_EXPANSION * total, f"loading the {name} files in {root} ({total:,} bytes)")
    return train, test, total


class _NdarrayToken:
    """What a file's reference to ``numpy.ndarray`` resolves to: usable only as the first
    argument of the array reconstructor, never called (calling ``ndarray`` directly could
    allocate any size the file names)."""

    def __new__(cls, *args: Any) -> Any:
        raise pickle.UnpicklingError("numpy.ndarray called directly; a CIFAR batch only "
                                     "rebuilds arrays from its own bytes")


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not _NdarrayToken:
        raise pickle.UnpicklingError("array reconstructor called with a type other than ndarray")
    return np.ndarray.__new__(np.ndarray, (0,), np.uint8)   # filled by BUILD from file bytes


def _dtype(spec: Any, *args: Any) -> np.dtype:
    if isinstance(spec, bytes):
        spec = spec.decode("ascii", "replace")
    if not isinstance(spec, str) or len(spec) > 4:
        raise pickle.UnpicklingError(f"dtype {spec!r:.40} is not a plain numeric dtype")
    dt = np.dtype(spec)
    if dt.kind not in "biuf" or dt.fields is not None or dt.subdtype is not None:
        raise pickle.UnpicklingError(f"dtype {spec!r} is not a plain numeric dtype")
    return dt


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    if not isinstance(buf, (bytes, bytearray)):   # bytes(n) of an int n would allocate n bytes
        raise pickle.UnpicklingError(f"frombuffer needs the array's bytes, got "
                                     f"{type(buf).__name__}")
    if not isinstance(dtype, np.dtype):
        raise pickle.UnpicklingError("frombuffer needs a dtype")
    return np.frombuffer(bytes(buf), dtype=dtype).reshape(shape, order=order).copy()


def _encode(text: Any, encoding: str = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only read for latin-1 byte strings")
    return codecs.encode(text, encoding)


_NATIVE_ORDER = "<" if sys.byteorder == "little" else ">"
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): _NdarrayToken,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,
}


class _Restricted(pickle._Unpickler):   # the pure-Python unpickler (module doc: its memo)
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: a CIFAR batch holds "
                                         f"only dicts, lists, byte strings and numpy arrays") \
                from None

    def load_build(self) -> None:
        """BUILD fills arrays (numpy's own __setstate__, which checks the byte count). A
        dtype's state is read for its byte order only and not applied: numpy's
        dtype.__setstate__ would rewrite a dtype's fields, item size and flags as the file
        says. On anything else BUILD would set attributes of the object the file names."""
        target = self.stack[-2]
        if isinstance(target, np.dtype):
            state = self.stack.pop()
            order = state[1] if isinstance(state, tuple) and len(state) > 1 else None
            if isinstance(order, bytes):    # Python 2's str, read with encoding="bytes"
                order = order.decode("latin-1")
            if order not in ("|", "=", _NATIVE_ORDER):
                raise pickle.UnpicklingError(f"dtype state with byte order {order!r:.10}: "
                                             f"only native-order arrays are read")
            return
        if type(target) is not np.ndarray:
            raise pickle.UnpicklingError(f"BUILD on a {type(target).__name__}: only arrays "
                                         f"are rebuilt")
        super().load_build()

    def _keys(self, keys: list) -> None:
        """Dict keys are byte strings, strings or ints: hashing a tuple that nests shared
        tuples takes time exponential in its depth, from a few hundred bytes."""
        for k in keys:
            if type(k) not in (bytes, str, int):
                raise pickle.UnpicklingError(f"a dict key of type {type(k).__name__}: a CIFAR "
                                             f"batch's keys are byte strings")

    def load_dict(self) -> None:
        self._keys(self.stack[0::2])
        super().load_dict()

    def load_setitem(self) -> None:
        self._keys(self.stack[-2:-1])
        super().load_setitem()

    def load_setitems(self) -> None:
        self._keys(self.stack[0::2])
        super().load_setitems()

    def load_set(self) -> None:
        raise pickle.UnpicklingError("a set: a CIFAR batch holds none (hashing its items could "
                                     "take exponential time)")

    dispatch = {**pickle._Unpickler.dispatch, pickle.BUILD[0]: load_build,
                pickle.DICT[0]: load_dict, pickle.SETITEM[0]: load_setitem,
                pickle.SETITEMS[0]: load_setitems, pickle.EMPTY_SET[0]: load_set,
                pickle.FROZENSET[0]: load_set, pickle.ADDITEMS[0]: load_set}


def load_batch(path: Path) -> dict[bytes, Any]:
    """One CIFAR python file as a dict with bytes keys (str keys are encoded), read with the
    restricted unpickler above. ConfigError naming ``data.path`` and the file when it is not
    such a pickle (truncated, text, another format, or naming a refused global)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"data.path: {path} cannot be read ({e.strerror})") from None
    try:
        obj = _Restricted(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError, UnicodeError, OverflowError) as e:
        raise ConfigError(f"data.path: {path} is not a CIFAR python batch (a pickled dict of "
                          f"numpy arrays and lists): {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"data.path: {path} holds a {type(obj).__name__}, expected a CIFAR "
                          f"batch dict with b'data' and labels")
    return {k.encode() if isinstance(k, str) else k: v for k, v in obj.items()}


def _rows(path: Path, label_key: bytes, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(x [N, 3, 32, 32] float32 in [0, 1], y [N] int64)`` of one file, checked."""
    d = load_batch(path)
    key = label_key.decode()
    if b"data" not in d or label_key not in d:
        raise ConfigError(f"data.path: {path} lacks {'data' if b'data' not in d else key!r}: "
                          f"expected a CIFAR batch dict with b'data' and b'{key}' "
                          f"(found {sorted(map(repr, d))[:6]})")
    x = d[b"data"]
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 \
            or x.shape[1] != int(np.prod(IMAGE_SHAPE)):
        got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ConfigError(f"data.path: {path}: 'data' must be a uint8 array [N, 3072] "
                          f"(32x32 RGB rows), got {got}")
    labels = d[label_key]
    # a flat list of ints (or a 1-D array) before numpy sees it: nested lists sharing memo
    # entries can describe 2^k labels in a few hundred bytes
    flat = (isinstance(labels, np.ndarray) and labels.ndim == 1) or (
        isinstance(labels, list) and all(type(v) is int for v in labels))
    try:
        y = np.asarray(labels) if flat else np.asarray([], dtype=object)
    except (ValueError, TypeError, OverflowError):
        y = np.asarray([], dtype=object)
    if y.ndim != 1 or y.dtype.kind not in "iu" or y.shape[0] != x.shape[0]:
        raise ConfigError(f"data.path: {path}: {key!r} must be {x.shape[0]} integer labels "
                          f"(one per row of 'data')")
    if y.size and (y.min() < 0 or y.max() >= classes):
        bad = int(y.max()) if y.max() >= classes else int(y.min())
        raise ConfigError(f"data.path: {path}: {key!r} holds label {bad}, outside "
                          f"0..{classes - 1}")
    return (x.reshape(-1, *IMAGE_SHAPE).astype(np.float32) / 255.0), y.astype(np.int64)


def load_cifar_arrays(path: Any, name: str, labels: str = "fine") -> tuple[np.ndarray, ...]:
    """``(x_train, y_train, x_test, y_test)`` of CIFAR ``name`` under ``path`` (see above)."""
    train, test, _ = cifar_files(path, name)
    label_key, classes = CIFAR_LAYOUTS[name]["labels"][labels]
    parts = [_rows(p, label_key, classes) for p in train]
    xt, yt = _rows(test, label_key, classes)
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            xt, yt)


def build_cifar(name: str, path: str | Path, seed: int, *, num_clients: int = 100,
                partition: str | dict | None = None, labels: str = "fine") -> FederatedDataset:
    """CIFAR ``name`` (``cifar10``/``cifar100``) partitioned over ``num_clients`` clients."""
    x, y, xt, yt = load_cifar_arrays(path, name, labels)
    classes = CIFAR_LAYOUTS[name]["labels"][labels][1]
    return build_from_arrays(x, y, num_clients, partition, seed, x_test=xt, y_test=yt,
                             num_classes=classes, name=name if name == "cifar10" else
                             f"{name}:{labels}")


def build_cifar10(path: str | Path, seed: int, **kwargs: Any) -> FederatedDataset:
    """:func:`build_cifar` for CIFAR-10."""
    return build_cifar("cifar10", path, seed, **kwargs)


def build_cifar100(path: str | Path, seed: int, **kwargs: Any) -> FederatedDataset:
    """:func:`build_cifar` for CIFAR-100 (``labels``: ``fine`` or ``coarse``)."""
    return build_cifar("cifar100", path, seed, **kwargs)
