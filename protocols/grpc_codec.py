"""A strict msgpack codec for tensors and nested dicts of them (the gRPC wire; never pickle).

A tensor (a ``numpy.ndarray`` or a ``torch.Tensor``, copied to host once) travels as the msgpack
extension type :data:`TENSOR_EXT` whose payload is a little-endian header and the raw bytes::

    u8 dtype code | u8 ndim | ndim x u64 shape | prod(shape) * itemsize bytes (C order, LE)

Everything else is plain msgpack: ``None``, bools, ints, floats, str, bytes, lists and maps with
str keys. :func:`decode` rebuilds tensors as read-only numpy views over the received buffer
(``numpy.frombuffer``, zero-copy; :func:`to_tensors` wraps them with ``torch.from_numpy``,
again without a copy) and is strict — every problem is one :class:`CodecError` naming where:

* bytes that are not one complete msgpack object (random, truncated or bit-flipped input);
* an extension type other than :data:`TENSOR_EXT`, a dtype code outside :data:`DTYPES`, a
  header whose shape disagrees with the payload's length, more than :attr:`Limits.max_ndim`
  dimensions;
* non-finite values (NaN, ±inf) in a floating tensor (``Limits.allow_nonfinite`` off);
* a message, string, byte string, list or map larger than the :class:`Limits` — checked from
  the declared lengths before anything is allocated (msgpack's own ``max_*_len`` bounds), so
  memory stays bounded by the input's size; nesting deeper than ``Limits.max_depth``.

:func:`check_params` then checks a decoded ``{name: array}`` against the model's names, shapes
and dtype (:func:`param_spec`).
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any, Mapping

import msgpack
import numpy as np
import torch

#: the msgpack extension type code of a tensor
TENSOR_EXT = 1

#: wire dtype code -> numpy dtype (little-endian); anything else is refused
DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"), 2: np.dtype("<f8"), 3: np.dtype("<f2"), 4: np.dtype("<i8"),
    5: np.dtype("<i4"), 6: np.dtype("|u1"), 7: np.dtype("|b1"),
}
_CODES = {dt: code for code, dt in DTYPES.items()}
_HEAD = struct.Struct("<BB")
_DIM = struct.Struct("<Q")


class CodecError(ValueError):
    """A message that cannot be decoded or fails a check (the text names what and where)."""


@dataclass(frozen=True)
class Limits:
    """Bounds every decoded message must respect (defaults: a 1 GiB message).

    ``max_message_bytes`` bounds the encoded message (and so every string, byte string and
    tensor in it); ``max_items`` any list's or map's length; ``max_depth`` the nesting of lists
    and maps; ``max_ndim`` a tensor's dimensions; ``allow_nonfinite``: accept NaN/±inf."""

    max_message_bytes: int = 1 << 30
    max_items: int = 1 << 20
    max_depth: int = 32
    max_ndim: int = 8
    allow_nonfinite: bool = False


DEFAULT_LIMITS = Limits()


# ----------------------------------------------------------------------------- encode
def _tensor_payload(arr: np.ndarray) -> msgpack.ExtType:
    dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    code = _CODES.get(np.dtype(dt))
    if code is None:
        raise CodecError(f"tensor dtype {arr.dtype} cannot be sent (allowed: "
                         f"{', '.join(str(d) for d in DTYPES.values())})")
    arr = np.ascontiguousarray(arr, dtype=DTYPES[code])
    head = _HEAD.pack(code, arr.ndim) + b"".join(_DIM.pack(int(n)) for n in arr.shape)
    return msgpack.ExtType(TENSOR_EXT, head + arr.tobytes())


def _default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return _tensor_payload(obj.detach().cpu().numpy())
    if isinstance(obj, np.ndarray):
        return _tensor_payload(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, tuple):
        return list(obj)
    raise CodecError(f"cannot encode a {type(obj).__name__} (only None, bool, int, float, str, "
                     f"bytes, lists, str-keyed dicts and tensors travel)")


def encode(obj: Any) -> bytes:
    """``obj`` (plain values, lists, str-keyed dicts, tensors) as msgpack bytes."""
    try:
        return msgpack.packb(obj, default=_default, use_bin_type=True, strict_types=False)
    except CodecError:
        raise
    except (TypeError, ValueError, OverflowError) as e:
        raise CodecError(f"cannot encode: {e}") from None


# ----------------------------------------------------------------------------- decode
def _decode_tensor(data: bytes, limits: Limits) -> np.ndarray:
    if len(data) < _HEAD.size:
        raise CodecError("tensor header truncated")
    code, ndim = _HEAD.unpack_from(data, 0)
    dt = DTYPES.get(code)
    if dt is None:
        raise CodecError(f"tensor dtype code {code} is not one of {sorted(DTYPES)}")
    if ndim > limits.max_ndim:
        raise CodecError(f"tensor has {ndim} dimensions (at most {limits.max_ndim})")
    start = _HEAD.size + ndim * _DIM.size
    if len(data) < start:
        raise CodecError("tensor shape truncated")
    shape = tuple(_DIM.unpack_from(data, _HEAD.size + i * _DIM.size)[0] for i in range(ndim))
    count = math.prod(shape)
    if count * dt.itemsize != len(data) - start:   # Python ints: no overflow
        raise CodecError(f"tensor of shape {shape} and dtype {dt} needs "
                         f"{count * dt.itemsize} bytes, the message carries {len(data) - start}")
    arr = np.frombuffer(data, dtype=dt, count=count, offset=start).reshape(shape)
    if not limits.allow_nonfinite and dt.kind == "f" and count and not np.isfinite(arr).all():
        raise CodecError(f"tensor of shape {shape} holds non-finite values (NaN or inf)")
    return arr


def _check(obj: Any, limits: Limits, depth: int, where: str) -> None:
    if isinstance(obj, dict):
        if depth >= limits.max_depth:
            raise CodecError(f"{where}: nested deeper than {limits.max_depth}")
        for k, v in obj.items():
            if not isinstance(k, str):
                raise CodecError(f"{where}: map key {k!r} is not a string")
            _check(v, limits, depth + 1, f"{where}.{k}")
    elif isinstance(obj, list):
        if depth >= limits.max_depth:
            raise CodecError(f"{where}: nested deeper than {limits.max_depth}")
        for i, v in enumerate(obj):
            _check(v, limits, depth + 1, f"{where}[{i}]")
    elif isinstance(obj, float) and not limits.allow_nonfinite and not math.isfinite(obj):
        raise CodecError(f"{where}: non-finite number {obj!r}")


def decode(data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> Any:
    """The object :func:`encode` wrote, checked against ``limits`` (module docstring); tensors
    as read-only numpy arrays over ``data``'s bytes. Raises :class:`CodecError`."""
    size = memoryview(data).nbytes
    if size > limits.max_message_bytes:
        raise CodecError(f"message of {size} bytes exceeds the limit of "
                         f"{limits.max_message_bytes} bytes")

    def ext_hook(code: int, payload: bytes) -> Any:
        if code != TENSOR_EXT:
            raise CodecError(f"unknown msgpack extension type {code}")
        return _decode_tensor(payload, limits)

    try:
        obj = msgpack.unpackb(data, raw=False, ext_hook=ext_hook, strict_map_key=True,
                              use_list=True,
                              max_str_len=size, max_bin_len=size, max_ext_len=size,
                              max_array_len=min(size, limits.max_items),
                              max_map_len=min(size, limits.max_items))
    except CodecError:
        raise
    except msgpack.ExtraData:
        raise CodecError("trailing bytes after the message") from None
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError, OverflowError,
            struct.error) as e:
        raise CodecError(f"not a valid message ({type(e).__name__}: {e})"[:300]) from None
    _check(obj, limits, 0, "message")
    return obj


# ----------------------------------------------------------------------------- params
#: ``{name: (shape, dtype)}``: what a model's parameters look like on the wire
ParamSpec = dict[str, tuple[tuple[int, ...], np.dtype]]


def param_spec(params: Mapping[str, torch.Tensor | np.ndarray], stacked: int | None = None
               ) -> ParamSpec:
    """The names, shapes and numpy dtypes of ``params`` (``stacked``: with a leading
    dimension of that many rows)."""
    lead = () if stacked is None else (int(stacked),)
    out: ParamSpec = {}
    for k, v in params.items():
        dt = (torch.empty(0, dtype=v.dtype).numpy().dtype if isinstance(v, torch.Tensor)
              else np.asarray(v).dtype)
        out[k] = (lead + tuple(v.shape), np.dtype(dt))
    return out


def check_params(arrays: Any, spec: ParamSpec, what: str) -> dict[str, np.ndarray]:
    """``arrays`` as ``{name: ndarray}`` when its names, shapes and dtypes are exactly
    ``spec``'s; CodecError naming ``what`` and the first difference otherwise."""
    if not isinstance(arrays, dict):
        raise CodecError(f"{what}: expected a map of tensors, got {type(arrays).__name__}")
    if set(arrays) != set(spec):
        extra, missing = sorted(set(arrays) - set(spec)), sorted(set(spec) - set(arrays))
        raise CodecError(f"{what}: tensor names differ from the model's (unexpected {extra}, "
                         f"missing {missing})")
    for k, (shape, dt) in spec.items():
        v = arrays[k]
        if not isinstance(v, np.ndarray):
            raise CodecError(f"{what}.{k}: expected a tensor, got {type(v).__name__}")
        if v.dtype != dt:
            raise CodecError(f"{what}.{k}: dtype {v.dtype}, the model's is {dt}")
        if tuple(v.shape) != tuple(shape):
            raise CodecError(f"{what}.{k}: shape {tuple(v.shape)}, expected {tuple(shape)}")
    return arrays

