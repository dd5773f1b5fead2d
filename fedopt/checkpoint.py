"""The checkpoint format: a ``safetensors`` file that never executes code when loaded.

A checkpoint (``fedopt-checkpoint/1``) of a nested ``state`` (dicts, lists, tuples, tensors,
numpy arrays and scalars, str/int/float/bool/None) is one safetensors file:

* **tensors** — every tensor of ``state``, named by its path (``server/params/fc.weight``; a
  name taken twice gets ``#1``, ``#2``, ...), stored once however often it appears; numpy arrays
  are stored as tensors too. Dtypes: bool, (u)int8, int16/32/64, float16/bfloat16/32/64;
  strided layout only.
* **metadata** (strings) — ``format``: ``"fedopt-checkpoint/1"``; ``structure``: the nested
  structure as compact JSON in which every container and every non-JSON leaf is a one-key object
  (``{"dict": [[k, v], ...]}``, ``{"list": [...]}``, ``{"tuple": [...]}``, ``{"tensor": name}``
  (+ ``"requires_grad": true``), ``{"ndarray": name}``, ``{"numpy": [dtype, value]}``,
  ``{"int": "<digits>"}`` beyond 2**53, ``{"float": "nan" | "inf" | "-inf"}``); ``sha256``: the
  SHA-256 of the structure JSON and of every tensor's name, dtype, shape and bytes (sorted by
  name).

Encoding raises ``TypeError`` naming the path of a value it cannot store. Decoding raises
:class:`CheckpointError` naming the source when the bytes are truncated, damaged (bad header,
tensor table or structure, checksum mismatch), not a fedopt checkpoint (no ``format`` tag), or a
pickle: files written by ``torch.save`` (zip or raw pickle) are refused and never unpickled.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from fedopt.jsonio import NON_FINITE, float_to_json

PathLike = str | os.PathLike

CHECKPOINT_FORMAT = "fedopt-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint file is damaged, not a fedopt checkpoint, or an old pickle checkpoint."""


def pickle_checkpoint_error(source: str) -> CheckpointError:
    """The error for a pickle (``torch.save``) checkpoint found at ``source``: never loaded."""
    return CheckpointError(
        f"{source}: a pickle checkpoint (torch.save, written by an older fedopt); fedopt "
        f"never unpickles files, since that can run arbitrary code; rerun into a new out "
        f"directory")


def _tensor_name(path: str, taken: set[str]) -> str:
    name = path or "tensor"
    if name in taken or name == "__metadata__":
        i = 1
        while f"{name}#{i}" in taken:
            i += 1
        name = f"{name}#{i}"
    taken.add(name)
    return name


class _Encoder:
    """Nested Python/torch values -> (JSON structure, flat tensor dict). Every container and
    every non-JSON leaf is a one-key object (``{"dict": [[k, v], ...]}``, ``{"tensor": name}``,
    ...), so the structure is unambiguous; a tensor object met twice is stored once."""

    _SAFE_INT = 2 ** 53

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.tensors: dict[str, Any] = {}
        self.memo: dict[int, str] = {}
        self.names: set[str] = set()
        self.alive: list[Any] = []   # every memoised object outlives the encoding: ids stay unique

    def _store(self, t: Any, path: str, origin: Any = None) -> str:
        """Store ``t`` once per ``origin`` object (default ``t`` itself): a numpy array's
        temporary tensor view is keyed by the array, whose id cannot be reused while encoding."""
        torch = self.torch
        if t.layout != torch.strided:
            raise TypeError(f"{path}: cannot store a {t.layout} tensor in a checkpoint")
        if t.dtype not in _SAFETENSORS_DTYPES:
            raise TypeError(f"{path}: cannot store a {t.dtype} tensor in a checkpoint")
        origin = t if origin is None else origin
        key = id(origin)
        if key not in self.memo:
            self.alive.append(origin)
            name = _tensor_name(path, self.names)
            self.tensors[name] = t.detach().to("cpu", copy=True,
                                               memory_format=torch.contiguous_format)
            self.memo[key] = name
        return self.memo[key]

    def encode(self, obj: Any, path: str) -> Any:
        torch = self.torch
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, int):
            return int(obj) if abs(obj) <= self._SAFE_INT else {"int": str(int(obj))}
        if isinstance(obj, float):
            return float(obj) if math.isfinite(obj) else {"float": float_to_json(float(obj))}
        if isinstance(obj, torch.Tensor):
            out: dict[str, Any] = {"tensor": self._store(obj, path)}
            if obj.requires_grad:
                out["requires_grad"] = True
            return out
        if isinstance(obj, Mapping):
            return {"dict": [[self.encode(k, f"{path}/<key>"),
                              self.encode(v, f"{path}/{k}" if path else str(k))]
                             for k, v in obj.items()]}
        if type(obj) is list or type(obj) is tuple:
            kind = type(obj).__name__
            return {kind: [self.encode(v, f"{path}/{i}") for i, v in enumerate(obj)]}
        mod = type(obj).__module__
        if mod == "numpy":
            import numpy as np

            if isinstance(obj, np.ndarray):
                if obj.dtype == object:
                    raise TypeError(f"{path}: cannot store an object array in a checkpoint")
                return {"ndarray": self._store(torch.from_numpy(np.ascontiguousarray(obj)), path,
                                               origin=obj)}
            if isinstance(obj, np.generic):
                return {"numpy": [obj.dtype.str, self.encode(obj.item(), path)]}
        raise TypeError(f"{path or 'checkpoint'}: cannot store {type(obj).__name__} in a "
                        f"checkpoint (tensors, numpy arrays, dicts, lists, tuples, str, int, "
                        f"float, bool and None only)")


def _decode(obj: Any, tensors: Mapping[str, Any], source: str) -> Any:
    if obj is None or isinstance(obj, (bool, str, int, float)):
        return obj
    if isinstance(obj, dict) and len(obj) >= 1:
        tag = next(iter(obj))
        value = obj[tag]
        if tag == "dict":
            return {_decode(k, tensors, source): _decode(v, tensors, source) for k, v in value}
        if tag == "list":
            return [_decode(v, tensors, source) for v in value]
        if tag == "tuple":
            return tuple(_decode(v, tensors, source) for v in value)
        if tag == "int":
            return int(value)
        if tag == "float":
            return NON_FINITE[value]
        if tag == "tensor":
            t = tensors[value]
            return t.requires_grad_(True) if obj.get("requires_grad") else t
        if tag == "ndarray":
            return tensors[value].numpy()
        if tag == "numpy":
            import numpy as np

            return np.dtype(value[0]).type(_decode(value[1], tensors, source))
    raise CheckpointError(f"{source}: unknown entry {str(obj)[:80]!r} in the checkpoint structure")


def _lazy_dtypes() -> frozenset:
    import torch

    names = ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16",
             "float32", "float64")
    return frozenset(getattr(torch, n) for n in names)


class _Dtypes:
    """Dtypes a safetensors file can hold (built on first use: keeps ``import`` free of torch)."""

    _set: frozenset | None = None

    def __contains__(self, dtype: Any) -> bool:
        if _Dtypes._set is None:
            _Dtypes._set = _lazy_dtypes()
        return dtype in _Dtypes._set


_SAFETENSORS_DTYPES = _Dtypes()


def _digest(structure: str, tensors: Mapping[str, Any]) -> str:
    """SHA-256 of the structure JSON and of every tensor's name, dtype, shape and bytes."""
    import torch

    h = hashlib.sha256(structure.encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        flat = t.contiguous().reshape(-1)
        if flat.numel():
            h.update(memoryview(flat.view(torch.uint8).numpy()))
    return h.hexdigest()


#: the largest JSON structure a checkpoint may carry in its header (safetensors' loader refuses
#: headers over 100 MB; this leaves room for the tensor table)
MAX_STRUCTURE_BYTES = 64 * 2 ** 20


def encode_checkpoint(state: Mapping[str, Any]) -> bytes:
    """The bytes of a checkpoint file: a ``safetensors`` file whose tensors are those of the
    nested ``state`` (named by their path, e.g. ``server/params/fc.weight``) and whose metadata
    holds the structure and scalars as JSON (``structure``), a SHA-256 of both (``sha256``) and
    the format tag. Round-trips exactly through :func:`decode_checkpoint`: every tensor dtype
    safetensors knows (bit for bit, incl. empty and non-contiguous tensors), nested
    dicts (any JSON-able keys, order kept), lists, tuples, ``None``, bools, ints of any size,
    floats incl. non-finite ones, numpy arrays and scalars.

    Raises ``TypeError`` naming the path of a value it cannot store, or when the structure would
    not fit in a checkpoint header (:data:`MAX_STRUCTURE_BYTES`).
    """
    from safetensors.torch import save

    if not isinstance(state, Mapping):
        raise TypeError(f"state: expected a mapping, got {type(state).__name__}")
    enc = _Encoder()
    structure = json.dumps(enc.encode(state, ""), allow_nan=False, separators=(",", ":"))
    if len(structure) > MAX_STRUCTURE_BYTES:   # safetensors refuses headers over 100 MB on load
        raise TypeError(f"checkpoint: its structure takes {len(structure):,} bytes of JSON, more "
                        f"than the {MAX_STRUCTURE_BYTES:,} a checkpoint header may hold (store "
                        f"large per-client values as tensors, not Python lists)")
    meta = {"format": CHECKPOINT_FORMAT, "structure": structure,
            "sha256": _digest(structure, enc.tensors)}
    return save(enc.tensors, metadata=meta)


def _looks_like_safetensors(data: bytes) -> bool:
    """An 8-byte little-endian header length that fits the file, then a JSON object."""
    if len(data) < 9:
        return False
    n = int.from_bytes(data[:8], "little")
    return n <= len(data) - 8 and data[8:9] == b"{"


def _is_pickle(data: bytes) -> bool:
    """torch.save's zip or a raw pickle (protocol ≥ 2 starts with 0x80) — checked only for a file
    that is not safetensors: a header length whose low byte is 0x80 starts with that byte too."""
    if _looks_like_safetensors(data):
        return False
    return data[:4] == b"PK\x03\x04" or data[:1] == b"\x80"


def _header(data: bytes, source: str, check_size: bool = True) -> dict[str, Any]:
    if len(data) < 8:
        raise CheckpointError(f"{source}: truncated ({len(data)} bytes)")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise CheckpointError(f"{source}: truncated (header of {n} bytes, file of {len(data)})")
    try:
        header = json.loads(data[8:8 + n])
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{source}: damaged (its header is not valid JSON)") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{source}: not a fedopt checkpoint (no {CHECKPOINT_FORMAT!r} "
                              f"metadata)")
    if check_size:
        try:
            ends = [int(e["data_offsets"][1]) for k, e in header.items() if k != "__metadata__"]
        except (KeyError, TypeError, ValueError, IndexError):
            raise CheckpointError(f"{source}: damaged (bad tensor table)") from None
        need = 8 + n + max(ends, default=0)
        if len(data) < need:
            raise CheckpointError(f"{source}: truncated ({len(data)} of {need} bytes)")
    return meta


def decode_checkpoint(data: bytes, source: str = "checkpoint") -> dict[str, Any]:
    """The state encoded by :func:`encode_checkpoint`; never executes code from the file.

    Raises :class:`CheckpointError` naming ``source`` when the bytes are truncated, damaged
    (checksum mismatch), not a fedopt checkpoint, or a pickle (``torch.save``) checkpoint.
    """
    from safetensors.torch import load

    if _is_pickle(data):
        raise pickle_checkpoint_error(source)
    meta = _header(data, source)
    try:
        tensors = load(bytes(data))
    except Exception as e:   # safetensors' own error type: truncated or damaged tensor table
        raise CheckpointError(f"{source}: damaged ({e})") from None
    structure = meta.get("structure", "")
    if _digest(structure, tensors) != meta.get("sha256"):
        raise CheckpointError(f"{source}: damaged (checksum mismatch)")
    try:
        state = _decode(json.loads(structure), tensors, source)
    except (ValueError, KeyError, TypeError, IndexError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{source}: damaged structure ({e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: not a fedopt checkpoint (got {type(state).__name__})")
    return state


def is_fedopt_checkpoint(path: Path) -> bool:
    """Whether ``path`` starts with a fedopt checkpoint header (reads the header only)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return False
            n = int.from_bytes(head, "little")
            if n > 100_000_000:
                return False
            _header(head + f.read(n), os.fspath(path), check_size=False)
        return True
    except (OSError, CheckpointError):
        return False


def load_checkpoint(path: PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load and verify a checkpoint file (e.g. one of a run directory: a dict with key
    ``round``); tensors are moved to ``map_location``.

    Raises :class:`CheckpointError` naming the file when it is truncated, damaged, not a
    fedopt checkpoint or an old pickle checkpoint (never unpickled), ``FileNotFoundError``
    when it is missing.
    """
    source = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    state = decode_checkpoint(data, source)
    if map_location is not None and str(map_location) != "cpu":
        from fedopt import tree

        state = tree.to(state, map_location)
    return state
