"""The msgpack tensor codec, messages and frames: round trips, strict refusals, fuzzing.

Fuzz properties (hypothesis): random, truncated, bit-flipped and oversize inputs never raise
anything but CodecError, never hang (each example has a deadline) and never allocate more than
the input's size allows (a declared length beyond the input is refused before allocation:
checked with tracemalloc).
"""
from __future__ import annotations

import math
import struct
import tracemalloc

import msgpack
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedopt.protocols import grpc_messages as M
from fedopt.protocols.grpc_codec import (DTYPES, TENSOR_EXT, CodecError, Limits, check_params,
                                         decode, encode, encode_parts, fragment, param_spec)
from fedopt.protocols.grpc_wire import BadFrame, Reassembler, join, read_frame, split

FUZZ = settings(max_examples=150, deadline=500, suppress_health_check=[HealthCheck.too_slow])


def _task(n: int = 3) -> M.Task:
    return M.Task(task_id=7, epoch="e1", kind="run",
                  starts={"w": np.arange(12, dtype=np.float32).reshape(3, 4),
                          "b": np.zeros(4, np.float32)},
                  shared=True, client_ids=np.arange(n), keys=np.full(n, 2),
                  weights=np.linspace(0.5, 1.5, n), optimizer={"name": "sgd", "lr": 0.1})


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int64, np.int32,
                                   np.uint8, np.bool_])
def test_tensor_round_trip_is_exact_and_zero_copy(dtype):
    a = (np.arange(24) % 5).astype(dtype).reshape(2, 3, 4)
    data = encode({"a": a, "nested": {"list": [a[0], 1, "x", None, b"raw"]}})
    out = decode(data)
    assert out["a"].dtype == a.dtype and out["a"].shape == a.shape
    assert np.array_equal(out["a"], a)
    assert np.array_equal(out["nested"]["list"][0], a[0])
    assert out["nested"]["list"][1:] == [1, "x", None, b"raw"]
    assert not out["a"].flags.writeable          # a view over the received buffer
    assert out["a"].base is not None
    buf = bytearray(data)                        # a reassembly buffer: still a read-only view
    view = decode(buf)["a"]
    assert np.shares_memory(view, np.frombuffer(buf, np.uint8)) and not view.flags.writeable


def test_encoding_does_not_copy_tensors():
    a = np.arange(1000, dtype=np.float32)
    parts = encode_parts({"a": a})
    assert any(isinstance(p, memoryview) and np.shares_memory(np.frombuffer(p, np.uint8), a)
               for p in parts)


def test_torch_tensors_and_non_contiguous_views_encode_as_their_values():
    t = torch.arange(12, dtype=torch.float64).reshape(3, 4).t()
    out = decode(encode({"t": t}))["t"]
    assert np.array_equal(out, t.numpy())


def test_message_round_trip():
    t = _task()
    back = M.unpack(M.pack(t))
    assert isinstance(back, M.Task) and back.task_id == 7 and back.optimizer == t.optimizer
    assert np.array_equal(back.starts["w"], t.starts["w"])
    assert np.array_equal(back.weights, t.weights) and back.weights.dtype == np.float64


def test_pack_parts_with_pre_encoded_field_equals_pack():
    t = _task()
    parts = M.pack_parts(t, {"starts": fragment(t.starts)})
    assert b"".join(parts) == M.pack(t)
    corr = M.Task(**{**{f: getattr(t, f) for f in ("task_id", "epoch", "kind", "starts",
                                                    "shared", "client_ids", "keys", "weights")},
                     "correction": {"w": np.ones((3, 4), np.float32)}})
    back = M.unpack(b"".join(M.pack_parts(corr, {"starts": fragment(t.starts)})))
    assert np.array_equal(back.starts["w"], t.starts["w"])      # the fragment's tensors first,
    assert np.array_equal(back.correction["w"], np.ones((3, 4)))   # the message's after them


@pytest.mark.parametrize("size,chunk", [(0, 7), (1, 7), (7, 7), (100, 7), (1000, 1 << 20)])
def test_frames_reassemble(size, chunk):
    payload = bytes(range(256)) * (size // 256 + 1)
    payload = payload[:size]
    frames = [read_frame(f) for f in split([payload[:3], payload[3:]], chunk)]
    assert len(frames) == max(1, math.ceil(size / chunk))
    assert bytes(join(frames, max_bytes=size)) == payload


# ----------------------------------------------------------------------------- refusals
def _msg(body: bytes, data: bytes = b"") -> bytes:
    """A message by hand: u32 body length, body, padding to 8, data section."""
    head = struct.pack("<I", len(body)) + body
    return head + bytes(-len(head) % 8) + data


def _ext(code, ndim, shape, payload, offset=0):
    head = (struct.pack("<BB", code, ndim) + b"".join(struct.pack("<Q", s) for s in shape)
            + struct.pack("<Q", offset))
    return _msg(msgpack.packb({"a": msgpack.ExtType(TENSOR_EXT, head)}), payload)


@pytest.mark.parametrize("data,words", [
    (_ext(99, 1, [2], b"\0" * 8), "dtype code 99"),
    (_ext(1, 1, [3], b"\0" * 8), "lies outside"),
    (_ext(1, 1, [2 ** 62], b"\0" * 8), "lies outside"),
    (_ext(1, 1, [1], b"\0" * 16, offset=4), "lies outside"),         # off the 8-byte grid
    (_ext(1, 1, [2], b"\0" * 16), "data section holds 16 bytes"),   # trailing data
    (_ext(1, 9, [1] * 9, b"\0" * 8), "9 dimensions"),
    (_msg(msgpack.packb({"a": msgpack.ExtType(5, b"xx")})), "extension type 5"),
    (_msg(msgpack.packb({1: 2})), "not a valid message"),
    (_msg(msgpack.packb({"a": float("nan")})), "non-finite"),
    (_ext(1, 1, [2], np.array([1.0, np.inf], np.float32).tobytes()), "non-finite"),
    (_msg(msgpack.packb([1, 2]) + b"\x01"), "trailing bytes"),
    (struct.pack("<I", 100) + b"\x90", "body of 100 bytes"),
    (b"\x01", "shorter than its header"),
])
def test_decode_refuses_with_a_clear_error(data, words):
    with pytest.raises(CodecError, match=words):
        decode(data)


def test_size_and_nesting_limits():
    big = encode({"a": np.zeros(1000, np.float32)})
    with pytest.raises(CodecError, match="exceeds the limit"):
        decode(big, Limits(max_message_bytes=1000))
    deep: object = 1
    for _ in range(40):
        deep = [deep]
    with pytest.raises(CodecError, match="nested deeper"):
        decode(encode(deep), Limits(max_depth=32))
    with pytest.raises(CodecError):
        decode(encode(list(range(50))), Limits(max_items=10))


def test_nonfinite_allowed_only_when_asked():
    data = encode({"a": np.array([np.nan], np.float64)})
    assert np.isnan(decode(data, Limits(allow_nonfinite=True))["a"][0])


def test_check_params_against_the_model():
    model = {"w": torch.zeros(3, 4), "b": torch.zeros(4)}
    spec = param_spec(model)
    ok = {"w": np.zeros((3, 4), np.float32), "b": np.zeros(4, np.float32)}
    assert check_params(ok, spec, "delta") is ok
    with pytest.raises(CodecError, match=r"delta\.w: shape \(4, 3\)"):
        check_params({**ok, "w": np.zeros((4, 3), np.float32)}, spec, "delta")
    with pytest.raises(CodecError, match=r"delta\.b: dtype float64"):
        check_params({**ok, "b": np.zeros(4)}, spec, "delta")
    with pytest.raises(CodecError, match="unexpected \\['c'\\]"):
        check_params({**ok, "c": np.zeros(1, np.float32)}, spec, "delta")


@pytest.mark.parametrize("body,words", [
    ({"v": 99, "type": "ack", "ok": True}, "protocol version 99"),
    ({"v": M.PROTOCOL_VERSION, "type": "exec", "ok": True}, "unknown message type 'exec'"),
    ({"v": M.PROTOCOL_VERSION, "type": "ack"}, "ack.ok: missing"),
    ({"v": M.PROTOCOL_VERSION, "type": "ack", "ok": 1}, "ack.ok: expected true/false"),
    ({"v": M.PROTOCOL_VERSION, "type": "ack", "ok": True, "x": 1}, r"unknown field\(s\) \['x'\]"),
    ({"v": M.PROTOCOL_VERSION, "type": "poll", "session": "s", "wait_s": "1"},
     "poll.wait_s: expected a number"),
    ({"v": M.PROTOCOL_VERSION, "type": "register", "client_ids": np.arange(2.0),
      "counts": np.arange(2)}, "register.client_ids: expected a 1-d int64 tensor"),
])
def test_messages_are_strict(body, words):
    with pytest.raises(CodecError, match=words):
        M.unpack(encode(body))


def test_unexpected_message_type_refused():
    with pytest.raises(CodecError, match="unexpected message 'ack'"):
        M.unpack(M.pack(M.Ack(ok=True)), (M.Result,))


def test_frames_refused():
    good = list(split(b"x" * 100, 30))
    with pytest.raises(CodecError, match="out of order"):
        join([read_frame(good[1]), read_frame(good[0])], 1000)
    with pytest.raises(CodecError, match="exceeds the limit"):
        join([read_frame(good[0])], 50)
    with pytest.raises(CodecError, match="ended before"):
        join([read_frame(f) for f in good[:2]], 1000)
    assert isinstance(read_frame(b"nope"), BadFrame)
    assert isinstance(read_frame(b"XXXX" + good[0][4:]), BadFrame)


# ----------------------------------------------------------------------------- fuzzing
def _decode_all(data: bytes) -> None:
    try:
        M.unpack(data, limits=Limits(max_message_bytes=1 << 16))
    except CodecError:
        pass


@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes(data):
    _decode_all(data)
    _decode_all(_msg(b"\x8f" + data))   # a valid frame around it: deeper into the decoder


@FUZZ
@given(st.integers(0, 10_000), st.data())
def test_fuzz_truncated_and_bit_flipped(cut, draw):
    wire = M.pack(_task())
    _decode_all(wire[:cut % len(wire)])
    flipped = bytearray(wire)
    for _ in range(draw.draw(st.integers(1, 8))):
        i = draw.draw(st.integers(0, len(flipped) - 1))
        flipped[i] ^= 1 << draw.draw(st.integers(0, 7))
    _decode_all(bytes(flipped))


@FUZZ
@given(st.binary(max_size=64), st.integers(0, 2 ** 32 - 1), st.integers(1, 2 ** 32 - 1),
       st.integers(0, 2 ** 64 - 1))
def test_fuzz_frames(chunk, index, count, total):
    frame = struct.pack("<4sIIQ", b"FOP1", index, count, total) + chunk
    try:
        Reassembler(1 << 16).add(read_frame(frame))
    except CodecError:
        pass


def test_oversize_declarations_allocate_nothing():
    """A header declaring 4 GiB (bin, str, array, map, tensor) in a few bytes is refused
    without allocating it."""
    inputs = [_msg(b"\xc6\xff\xff\xff\xff"), _msg(b"\xdb\xff\xff\xff\xff"),
              _msg(b"\xdd\xff\xff\xff\xff"), _msg(b"\xdf\xff\xff\xff\xff"),
              _ext(1, 1, [2 ** 30], b""), struct.pack("<I", 2 ** 32 - 1),
              struct.pack("<4sIIQ", b"FOP1", 0, 2, 2 ** 40)]
    tracemalloc.start()
    try:
        for data in inputs:
            with pytest.raises(CodecError):
                if data.startswith(b"FOP1"):
                    Reassembler(1 << 20).add(read_frame(data))
                else:
                    decode(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_dtype_table_is_little_endian_and_unique():
    assert len(set(DTYPES.values())) == len(DTYPES)
    assert all(d.str[0] in "<|" for d in DTYPES.values())
    big = np.arange(3, dtype=">f8")
    assert np.array_equal(decode(encode({"a": big}))["a"], big)


def test_a_declared_size_is_not_allocated_before_its_bytes_arrive():
    """A peer announcing a message of 256 MiB (within the limit) and sending 10 bytes makes the
    receiver hold about those 10 bytes, not the announced size (one stalled or lying upload per
    buffered result would otherwise pin max_message_mb each); the reassembled bytes are
    unchanged."""
    r = Reassembler(1 << 30)
    tracemalloc.start()
    try:
        assert r.add(read_frame(struct.pack("<4sIIQ", b"FOP1", 0, 1000, 1 << 28) + b"x" * 10)
                     ) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    payload = bytes(range(256)) * 40
    frames = [read_frame(f) for f in split(payload, 1000)]
    assert bytes(join(frames, max_bytes=len(payload))) == payload


def test_empty_frames_are_refused_except_the_last():
    """A header may announce count = total + 1 frames; empty non-final frames were accepted, so
    an authenticated peer could stream empty frames for ever and hold an upload place while
    sending nothing. Only the last frame may be empty (the one frame of an empty message)."""
    def frame(index, count, total, chunk=b""):
        return read_frame(struct.pack("<4sIIQ", b"FOP1", index, count, total) + chunk)

    r = Reassembler(1 << 20)
    with pytest.raises(CodecError, match="empty"):
        r.add(frame(0, 11, 10))
    r = Reassembler(1 << 20)
    assert r.add(frame(0, 2, 3, b"abc")) is None
    assert bytes(r.add(frame(1, 2, 3))) == b"abc"          # an empty last frame is fine
    assert bytes(join([frame(0, 1, 0)], 10)) == b""          # an empty message: one frame
