"""A strict msgpack codec for tensors and nested dicts of them (the gRPC wire; never pickle).

A message is a msgpack object followed by the raw bytes of its tensors, out of band::

    u32 body_len | body (msgpack, body_len bytes) | 0-7 zero bytes | data section

Tensors (``numpy.ndarray`` or ``torch.Tensor``, copied to host once) appear in the body as the
msgpack extension type :data:`TENSOR_EXT` holding a little-endian header::

    u8 dtype code | u8 ndim | ndim x u64 shape | u64 offset into the data section (8-aligned)

and their C-order little-endian bytes lie at that offset of the data section, one after the
other, each 8-aligned. Everything else is plain msgpack: ``None``, bools, ints, floats, str,
bytes, lists and maps with str keys. So :func:`encode_parts` never copies a tensor (the parts
are views of its memory, joined only frame by frame on the way out) and :func:`decode` rebuilds
every tensor as a read-only ``numpy.frombuffer`` view over the received buffer — zero-copy
(``torch.from_numpy`` then wraps it without a copy either). Decoding is strict: every problem is
one :class:`CodecError` naming where:

* bytes that are not one complete message (random, truncated or bit-flipped input, a body
  length beyond the input, trailing bytes after the last tensor);
* an extension type other than :data:`TENSOR_EXT`, a dtype code outside :data:`DTYPES`, more
  than :attr:`Limits.max_ndim` dimensions, a tensor whose bytes lie outside the data section or
  off the 8-byte grid;
* non-finite values (NaN, ±inf) in a floating tensor or float (``Limits.allow_nonfinite`` off);
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
_BODY = struct.Struct("<I")
_ALIGN = 8


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


class _Packer:
    """Packs a body, collecting tensors for the data section (offsets from ``base``)."""

    def __init__(self, base: int = 0):
        self.offset = int(base)
        self.buffers: list[tuple[int, memoryview]] = []

    def _tensor(self, arr: np.ndarray) -> msgpack.ExtType:
        dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        code = _CODES.get(np.dtype(dt))
        if code is None:
            raise CodecError(f"tensor dtype {arr.dtype} cannot be sent (allowed: "
                             f"{', '.join(str(d) for d in DTYPES.values())})")
        arr = np.ascontiguousarray(arr, dtype=DTYPES[code])
        head = (_HEAD.pack(code, arr.ndim) + b"".join(_DIM.pack(int(n)) for n in arr.shape)
                + _DIM.pack(self.offset))
        self.buffers.append((self.offset, memoryview(arr.reshape(-1)).cast("B")))
        self.offset = _aligned(self.offset + arr.nbytes)
        return msgpack.ExtType(TENSOR_EXT, head)

    def default(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return self._tensor(obj.detach().cpu().numpy())
        if isinstance(obj, np.ndarray):
            return self._tensor(obj)
        if isinstance(obj, (np.integer,)):
            return int(obj)
        if isinstance(obj, (np.floating,)):
            return float(obj)
        if isinstance(obj, (np.bool_,)):
            return bool(obj)
        if isinstance(obj, tuple):
            return list(obj)
        raise CodecError(f"cannot encode a {type(obj).__name__} (only None, bool, int, float, "
                         f"str, bytes, lists, str-keyed dicts and tensors travel)")

    def pack(self, obj: Any) -> bytes:
        try:
            return msgpack.packb(obj, default=self.default, use_bin_type=True)
        except CodecError:
            raise
        except (TypeError, ValueError, OverflowError) as e:
            raise CodecError(f"cannot encode: {e}") from None


@dataclass(frozen=True)
class Fragment:
    """A value packed once for many messages (a round's model sent to every client): its body
    bytes and its tensors, placed first in the data section (:func:`assemble`)."""

    body: bytes
    buffers: tuple[tuple[int, memoryview], ...]
    size: int


def fragment(obj: Any) -> Fragment:
    """``obj`` packed with its tensors at the start of the data section."""
    p = _Packer()
    body = p.pack(obj)
    return Fragment(body, tuple(p.buffers), p.offset)


def assemble(pieces: list[Any]) -> list[Any]:
    """The parts of one message whose body is the concatenation of ``pieces`` — bytes already
    packed (no tensors), :class:`Fragment` objects (at most one, first in the data section:
    tensors of the others follow it) or ``("value", obj)`` to pack now. Returns a list of
    byte strings and memoryviews whose concatenation is the message."""
    frags = [x for x in pieces if isinstance(x, Fragment)]
    if len(frags) > 1:
        raise ValueError("assemble: at most one Fragment per message")
    p = _Packer(frags[0].size if frags else 0)
    body = []
    for x in pieces:
        if isinstance(x, Fragment):
            body.append(x.body)
        elif isinstance(x, tuple):
            body.append(p.pack(x[1]))
        else:
            body.append(x)
    body_bytes = b"".join(body)
    head_len = _BODY.size + len(body_bytes)
    parts: list[Any] = [_BODY.pack(len(body_bytes)), body_bytes,
                        bytes(_aligned(head_len) - head_len)]
    at = 0
    for offset, buf in (list(frags[0].buffers) if frags else []) + p.buffers:
        if offset > at:
            parts.append(bytes(offset - at))
        parts.append(buf)
        at = offset + buf.nbytes
    end = p.offset if p.buffers or not frags else frags[0].size
    if end > at:
        parts.append(bytes(end - at))
    return parts


def encode_parts(obj: Any) -> list[Any]:
    """``obj`` as message parts (byte strings and zero-copy views of its tensors)."""
    return assemble([("value", obj)])


def encode(obj: Any) -> bytes:
    """``obj`` (plain values, lists, str-keyed dicts, tensors) as one message."""
    return b"".join(encode_parts(obj))


# ----------------------------------------------------------------------------- decode
def _decode_tensor(head: bytes, data: Any, start: int, size: int, limits: Limits,
                   ends: list) -> np.ndarray:
    if len(head) < _HEAD.size:
        raise CodecError("tensor header truncated")
    code, ndim = _HEAD.unpack_from(head, 0)
    dt = DTYPES.get(code)
    if dt is None:
        raise CodecError(f"tensor dtype code {code} is not one of {sorted(DTYPES)}")
    if ndim > limits.max_ndim:
        raise CodecError(f"tensor has {ndim} dimensions (at most {limits.max_ndim})")
    if len(head) != _HEAD.size + (ndim + 1) * _DIM.size:
        raise CodecError("tensor header has the wrong length for its dimensions")
    shape = tuple(_DIM.unpack_from(head, _HEAD.size + i * _DIM.size)[0] for i in range(ndim))
    (offset,) = _DIM.unpack_from(head, _HEAD.size + ndim * _DIM.size)
    count = math.prod(shape)                      # Python ints: no overflow
    nbytes = count * dt.itemsize
    if offset % _ALIGN or start + offset + nbytes > size:
        raise CodecError(f"tensor of shape {shape} and dtype {dt} ({nbytes} bytes at offset "
                         f"{offset}) lies outside the message's {size - start} data bytes")
    arr = np.frombuffer(data, dtype=dt, count=count, offset=start + offset).reshape(shape)
    if arr.flags.writeable:
        arr.flags.writeable = False               # a view of the wire buffer: read-only
    if not limits.allow_nonfinite and dt.kind == "f" and count and not np.isfinite(arr).all():
        raise CodecError(f"tensor of shape {shape} holds non-finite values (NaN or inf)")
    ends.append(_aligned(offset + nbytes))
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
    as read-only numpy views over ``data``'s bytes. Raises :class:`CodecError`."""
    size = memoryview(data).nbytes
    if size > limits.max_message_bytes:
        raise CodecError(f"message of {size} bytes exceeds the limit of "
                         f"{limits.max_message_bytes} bytes")
    if size < _BODY.size:
        raise CodecError(f"message of {size} bytes is shorter than its header")
    (body_len,) = _BODY.unpack_from(data, 0)
    if _BODY.size + body_len > size:
        raise CodecError(f"body of {body_len} bytes announced, the message has "
                         f"{size - _BODY.size}")
    start = _aligned(_BODY.size + body_len)
    body = memoryview(data)[_BODY.size:_BODY.size + body_len]
    ends: list[int] = []

    def ext_hook(code: int, payload: bytes) -> Any:
        if code != TENSOR_EXT:
            raise CodecError(f"unknown msgpack extension type {code}")
        return _decode_tensor(payload, data, start, size, limits, ends)

    try:
        obj = msgpack.unpackb(body, raw=False, ext_hook=ext_hook, strict_map_key=True,
                              use_list=True, max_str_len=body_len, max_bin_len=body_len,
                              max_ext_len=body_len,
                              max_array_len=min(body_len, limits.max_items),
                              max_map_len=min(body_len, limits.max_items))
    except CodecError:
        raise
    except msgpack.ExtraData:
        raise CodecError("trailing bytes after the message body") from None
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError, OverflowError,
            struct.error) as e:
        raise CodecError(f"not a valid message ({type(e).__name__}: {e})"[:300]) from None
    finally:
        body.release()
    if max(ends, default=0) != max(size - start, 0):
        raise CodecError(f"the data section holds {max(size - start, 0)} bytes, its tensors "
                         f"end at {max(ends, default=0)}")
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

