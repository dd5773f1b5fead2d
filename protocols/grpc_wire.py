"""gRPC plumbing without code generation: the service's methods, chunked frames, TLS.

Every gRPC message of the service is one *frame* — a 20-byte little-endian header and a slice
of an encoded message (:mod:`fedopt.protocols.grpc_messages`)::

    b"FOP1" | u32 index | u32 count | u64 total_bytes | chunk

A message larger than the chunk size travels as ``count`` frames of one stream and is
reassembled by :class:`Reassembler` with bounds: frames must come in order (index 0..count−1),
all announcing the same ``count`` and ``total_bytes``; ``total_bytes`` may not exceed the
configured maximum (checked on the first frame) and the chunks must add up to it exactly.
Only the last frame may be empty: a stream of empty frames carries nothing and would let a
peer keep an upload open without sending data.
The buffer grows with the bytes that arrived, never to the announced size up front: a peer
that announces a large message and stalls holds only what it sent. The (de)serializers
handed to gRPC's generic method handlers are :func:`frame_bytes` and
:func:`read_frame`; the latter never raises (a malformed frame becomes a :class:`BadFrame`, which
the handler answers with ``INVALID_ARGUMENT`` and the reason), so no garbage reaches gRPC's own
error path.

Methods of service :data:`SERVICE` (request -> response; "stream": several frames):
``Register`` frame -> frame, ``Poll`` frame -> stream, ``Submit`` stream -> frame,
``Heartbeat`` frame -> frame. Each call carries the client's token in the metadata key
:data:`TOKEN_KEY`.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from fedopt.protocols.grpc_codec import CodecError

SERVICE = "fedopt.Coordinator"
TOKEN_KEY = "fedopt-token"
MAGIC = b"FOP1"
_FRAME = struct.Struct("<4sIIQ")
#: default bytes per frame (gRPC's default message limit is 4 MiB)
CHUNK_BYTES = 1 << 21
#: how a ``Submit`` refused for want of an upload place (``RESOURCE_EXHAUSTED``) begins its
#: details: the client submits the same answer again later (any other RESOURCE_EXHAUSTED, e.g. a
#: message over gRPC's size limit, is not retried)
BUSY = "coordinator busy"
#: trailing metadata of a Register refused ALREADY_EXISTS (another live process holds the
#: token): seconds until that process would count as silent
RETRY_KEY = "fedopt-retry-after-s"


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


@dataclass(frozen=True)
class Frame:
    index: int
    count: int
    total: int
    chunk: memoryview


@dataclass(frozen=True)
class BadFrame:
    """A received gRPC message that is not a frame (``reason``: one line)."""

    reason: str


def frame_bytes(frame: bytes) -> bytes:
    """Serializer: frames are already bytes."""
    return frame


def read_frame(data: bytes) -> Frame | BadFrame:
    """Deserializer: a :class:`Frame` over ``data`` (no copy), or a :class:`BadFrame`."""
    if len(data) < _FRAME.size:
        return BadFrame(f"frame of {len(data)} bytes is shorter than its header")
    magic, index, count, total = _FRAME.unpack_from(data, 0)
    if magic != MAGIC:
        return BadFrame("not a fedopt frame (bad magic bytes)")
    if count == 0 or index >= count:
        return BadFrame(f"frame index {index} of {count}")
    return Frame(index, count, total, memoryview(data)[_FRAME.size:])


def split(payload: bytes | bytearray | memoryview | list, chunk_bytes: int = CHUNK_BYTES
          ) -> Iterator[bytes]:
    """The frames of one message given as bytes or as a list of byte strings to concatenate
    (:func:`~fedopt.protocols.grpc_messages.pack_parts`); at least one frame. Each frame copies
    at most ``chunk_bytes`` of the payload; the payload itself is never joined."""
    views = [memoryview(p) for p in (payload if isinstance(payload, list) else [payload])]
    total = sum(v.nbytes for v in views)
    count = max(1, -(-total // chunk_bytes))
    part, offset = 0, 0
    for i in range(count):
        frame = [_FRAME.pack(MAGIC, i, count, total)]
        need = min(chunk_bytes, total - i * chunk_bytes)
        while need > 0:
            v = views[part]
            take = min(need, v.nbytes - offset)
            frame.append(v[offset:offset + take])
            offset += take
            need -= take
            if offset == v.nbytes:
                part, offset = part + 1, 0
        yield b"".join(frame)


class Reassembler:
    """Collects the frames of one message; :meth:`add` returns the payload when complete.
    ``max_bytes`` bounds the announced size (CodecError on the first frame); the buffer holds
    only the bytes received so far (it grows with them, amortised)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.buf: bytearray | None = None
        self.count = self.total = self.filled = 0
        self.next = 0

    def add(self, frame: Frame | BadFrame) -> bytearray | None:
        if isinstance(frame, BadFrame):
            raise CodecError(frame.reason)
        if self.buf is None:
            if frame.total > self.max_bytes:
                raise CodecError(f"message of {frame.total} bytes exceeds the limit of "
                                 f"{self.max_bytes} bytes")
            if frame.count > frame.total + 1:
                raise CodecError(f"{frame.count} frames for {frame.total} bytes")
            self.buf, self.count, self.total = bytearray(), frame.count, frame.total
        if (frame.index != self.next or frame.count != self.count
                or frame.total != self.total):
            raise CodecError(f"frame {frame.index}/{frame.count} ({frame.total} bytes) out of "
                             f"order: expected {self.next}/{self.count} ({self.total} bytes)")
        n = frame.chunk.nbytes
        if n == 0 and self.next + 1 < self.count:
            raise CodecError(f"frame {frame.index}/{frame.count} is empty (only the last frame "
                             f"of a message may be)")
        if self.filled + n > self.total:
            raise CodecError(f"frames carry more than the announced {self.total} bytes")
        self.buf += frame.chunk
        self.filled += n
        self.next += 1
        if self.next < self.count:
            return None
        if self.filled != self.total:
            raise CodecError(f"frames carry {self.filled} bytes, {self.total} announced")
        return self.buf


def join(frames: Iterable[Frame | BadFrame], max_bytes: int) -> bytearray:
    """The payload of a stream of frames (CodecError when malformed, incomplete or too big)."""
    r = Reassembler(max_bytes)
    for f in frames:
        out = r.add(f)
        if out is not None:
            return out
    raise CodecError("the stream ended before the message was complete")


def channel_options(max_frame_bytes: int) -> list[tuple[str, int]]:
    """gRPC options for both sides: frames up to ``max_frame_bytes`` (+ header), keepalive."""
    limit = int(max_frame_bytes) + 4096
    return [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit),
            ("grpc.keepalive_time_ms", 20_000), ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0)]


def read_pem(path: str | None, what: str) -> bytes | None:
    """The bytes of a PEM file (None for None); ValueError naming ``what`` when unreadable."""
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"{what}: cannot read {path!r} ({e.strerror or e})") from None


def server_credentials(cert: str, key: str, ca: str | None = None):
    """TLS credentials of the coordinator: its certificate chain and key; with ``ca``, mutual
    TLS (every client must present a certificate signed by that CA)."""
    import grpc

    pair = (read_pem(key, "executor.tls.key"), read_pem(cert, "executor.tls.cert"))
    root = read_pem(ca, "executor.tls.ca")
    return grpc.ssl_server_credentials([pair], root_certificates=root,
                                       require_client_auth=root is not None)


def client_credentials(ca: str | None, cert: str | None = None, key: str | None = None):
    """TLS credentials of a client: trust ``ca`` (None: the system's roots); ``cert``/``key``:
    the client's own certificate for mutual TLS."""
    import grpc

    if (cert is None) != (key is None):     # gRPC's C core aborts the process on half a pair
        raise ValueError("--cert and --key: give both (mutual TLS) or neither")
    return grpc.ssl_channel_credentials(root_certificates=read_pem(ca, "--ca"),
                                        private_key=read_pem(key, "--key"),
                                        certificate_chain=read_pem(cert, "--cert"))
