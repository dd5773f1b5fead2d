"""The messages between a gRPC coordinator and its client processes, with a protocol version.

Each message is a frozen dataclass; on the wire it is a msgpack map ``{"v": PROTOCOL_VERSION,
"type": <name>, <field>: <value>, ...}`` whose tensors travel out of band
(:mod:`fedopt.protocols.grpc_codec`). :func:`unpack`
is strict: a wrong version, an unknown type, a missing or unknown field and a value of the wrong
kind are each refused with one :class:`~fedopt.protocols.grpc_codec.CodecError` naming the
message and field. Field kinds (:data:`KINDS`): ``int``, ``float`` (ints accepted), ``str``,
``bool``, ``ids`` (int64 vector), ``f64`` (float64 vector), ``tensors`` (``{name: tensor}``),
``plain`` (a config-like map of plain values), each optionally ``?`` (None allowed).

The exchange (clients pull; the coordinator never dials a client)::

    Register(client_ids, counts, name)          -> Welcome(session, epoch, slot, config, ...)
    Poll(session, wait_s)                       -> Task | Idle | Shutdown       (streamed)
    Submit(Result | Failure)                    -> Ack(ok, reason)             (streamed)
    Heartbeat(session, task_id)                 -> Ack

``epoch`` is a fresh nonce per coordinator start: a result for another epoch (a restarted
coordinator) or for a task that is no longer outstanding is refused, so no update is ever
aggregated twice.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack
import numpy as np

from fedopt.protocols.grpc_codec import (DEFAULT_LIMITS, CodecError, Fragment, Limits, assemble,
                                         decode)

#: bumped whenever a message or field changes meaning; both sides must agree
PROTOCOL_VERSION = 1

KINDS = ("int", "float", "str", "bool", "ids", "f64", "tensors", "plain")


def _spec(kind: str, **kw: Any) -> Any:
    return field(metadata={"kind": kind}, **kw)


@dataclass(frozen=True)
class Message:
    """Base of every message (``type``: the wire name)."""

    type: ClassVar[str] = ""


@dataclass(frozen=True)
class Register(Message):
    """A client process announces the (global) client ids it holds and their train rows;
    ``instance``: a random id drawn once per process (the coordinator tells a process that
    registers again from another process using the same token)."""

    type: ClassVar[str] = "register"
    client_ids: np.ndarray = _spec("ids")
    counts: np.ndarray = _spec("ids")
    name: str = _spec("str", default="")
    instance: str = _spec("str", default="")


@dataclass(frozen=True)
class Welcome(Message):
    """The coordinator's answer: a session id, the coordinator's epoch, the client's slot, the
    run config (to build the model and local program), and the timing it expects."""

    type: ClassVar[str] = "welcome"
    session: str = _spec("str")
    epoch: str = _spec("str")
    slot: int = _spec("int")
    config: dict = _spec("plain")
    num_clients: int = _spec("int")
    counts: np.ndarray = _spec("ids")
    num_classes: int = _spec("int")
    program: str = _spec("str")
    heartbeat_s: float = _spec("float")


@dataclass(frozen=True)
class Poll(Message):
    """Ask for work, waiting up to ``wait_s`` seconds on the coordinator."""

    type: ClassVar[str] = "poll"
    session: str = _spec("str")
    wait_s: float = _spec("float")


@dataclass(frozen=True)
class Idle(Message):
    """No work now: poll again."""

    type: ClassVar[str] = "idle"


@dataclass(frozen=True)
class Shutdown(Message):
    """The run is over (or the coordinator stops): exit cleanly."""

    type: ClassVar[str] = "shutdown"
    reason: str = _spec("str")


@dataclass(frozen=True)
class Task(Message):
    """Train ``client_ids`` (kind ``run``: local jobs, Σ_j w_j Δ_j) or compute their full
    gradients (kind ``grad``) from ``starts`` (one shared model when ``shared``, else stacked
    ``[m, ...]`` rows in job order) with minibatches keyed by ``keys``."""

    type: ClassVar[str] = "task"
    task_id: int = _spec("int")
    epoch: str = _spec("str")
    kind: str = _spec("str")
    starts: dict = _spec("tensors")
    shared: bool = _spec("bool")
    client_ids: np.ndarray = _spec("ids")
    keys: np.ndarray = _spec("ids")
    weights: np.ndarray = _spec("f64")
    optimizer: dict | None = _spec("plain?", default=None)
    correction: dict | None = _spec("tensors?", default=None)
    keep_local: bool = _spec("bool", default=False)
    delay_s: float = _spec("float", default=0.0)


@dataclass(frozen=True)
class Result(Message):
    """A task's answer (fields as :class:`~fedopt.protocols.ray_messages.ShardResult`;
    ``grads``: the stacked full gradients of a ``grad`` task)."""

    type: ClassVar[str] = "result"
    session: str = _spec("str")
    epoch: str = _spec("str")
    task_id: int = _spec("int")
    client_ids: np.ndarray = _spec("ids")
    delta_sum: dict | None = _spec("tensors?", default=None)
    weight_sum: float = _spec("float", default=0.0)
    loss_sum: float = _spec("float", default=0.0)
    samples: int = _spec("int", default=0)
    updates: int = _spec("int", default=0)
    steps: np.ndarray | None = _spec("ids?", default=None)
    local_loss: np.ndarray | None = _spec("f64?", default=None)
    nonfinite: np.ndarray | None = _spec("ids?", default=None)
    local_params: dict | None = _spec("tensors?", default=None)
    grads: dict | None = _spec("tensors?", default=None)
    batch_size: np.ndarray | None = _spec("ids?", default=None)   # online local programs
    compute_s: float = _spec("float", default=0.0)


@dataclass(frozen=True)
class Failure(Message):
    """A task failed on the client (``error``: one line); the coordinator's dispatch policy
    decides (retry, then fail the run)."""

    type: ClassVar[str] = "failure"
    session: str = _spec("str")
    epoch: str = _spec("str")
    task_id: int = _spec("int")
    error: str = _spec("str")


@dataclass(frozen=True)
class Heartbeat(Message):
    type: ClassVar[str] = "heartbeat"
    session: str = _spec("str")
    task_id: int = _spec("int", default=-1)


@dataclass(frozen=True)
class Ack(Message):
    type: ClassVar[str] = "ack"
    ok: bool = _spec("bool")
    reason: str = _spec("str", default="")


MESSAGES: dict[str, type[Message]] = {
    m.type: m for m in (Register, Welcome, Poll, Idle, Shutdown, Task, Result, Failure,
                        Heartbeat, Ack)}


# ----------------------------------------------------------------------------- checks
def _check_value(kind: str, value: Any, where: str) -> Any:
    optional = kind.endswith("?")
    kind = kind.rstrip("?")
    if value is None:
        if optional:
            return None
        raise CodecError(f"{where}: missing value")
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise CodecError(f"{where}: expected an integer, got {type(value).__name__}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CodecError(f"{where}: expected a number, got {type(value).__name__}")
        return float(value)
    if kind == "str":
        if not isinstance(value, str):
            raise CodecError(f"{where}: expected a string, got {type(value).__name__}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise CodecError(f"{where}: expected true/false, got {type(value).__name__}")
        return value
    if kind in ("ids", "f64"):
        want = np.dtype("<i8") if kind == "ids" else np.dtype("<f8")
        if not isinstance(value, np.ndarray) or value.dtype != want or value.ndim != 1:
            got = (f"{value.dtype} tensor of shape {value.shape}" if isinstance(value, np.ndarray)
                   else type(value).__name__)
            raise CodecError(f"{where}: expected a 1-d {want.name} tensor, got {got}")
        return value
    if kind == "tensors":
        if not isinstance(value, dict) or not all(isinstance(v, np.ndarray)
                                                  for v in value.values()):
            raise CodecError(f"{where}: expected a map of tensors")
        return value
    if kind == "plain":
        if not isinstance(value, dict):
            raise CodecError(f"{where}: expected a map, got {type(value).__name__}")
        _no_tensors(value, where)
        return value
    raise AssertionError(kind)


def _no_tensors(obj: Any, where: str) -> None:
    if isinstance(obj, np.ndarray):
        raise CodecError(f"{where}: tensors are not allowed here")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _no_tensors(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for v in obj:
            _no_tensors(v, where)


# ----------------------------------------------------------------------------- pack / unpack
def pack_parts(msg: Message, encoded: dict[str, Fragment] | None = None) -> list[Any]:
    """``msg`` as a list of byte strings and zero-copy tensor views whose concatenation is its
    wire form. A field named in ``encoded`` is taken as already packed
    (:func:`~fedopt.protocols.grpc_codec.fragment` of its value), so a large value shared by
    many messages (a round's model, sent to every client) is packed once and its tensors never
    copied into each message. Fields are checked as :func:`unpack` will check them."""
    encoded = encoded or {}
    fields = dataclasses.fields(msg)
    pieces: list[Any] = [msgpack.Packer(use_bin_type=True).pack_map_header(2 + len(fields)),
                         msgpack.packb("v"), msgpack.packb(PROTOCOL_VERSION),
                         msgpack.packb("type"), msgpack.packb(msg.type)]
    for f in fields:
        pieces.append(msgpack.packb(f.name))
        if f.name in encoded:
            pieces.append(encoded[f.name])
            continue
        value = getattr(msg, f.name)
        _check_value(f.metadata["kind"], value, f"{msg.type}.{f.name}")
        pieces.append(("value", value))
    return assemble(pieces)


def pack(msg: Message) -> bytes:
    """``msg`` as wire bytes."""
    return b"".join(pack_parts(msg))


def unpack(data: bytes | bytearray | memoryview, expect: tuple[type[Message], ...] | None = None,
           limits: Limits = DEFAULT_LIMITS) -> Message:
    """The message in ``data`` (one of ``expect`` when given); CodecError otherwise."""
    body = decode(data, limits)
    if not isinstance(body, dict):
        raise CodecError(f"a message is a map, got {type(body).__name__}")
    version = body.pop("v", None)
    if version != PROTOCOL_VERSION:
        raise CodecError(f"protocol version {version!r}, this side speaks {PROTOCOL_VERSION} "
                         f"(upgrade the older of coordinator and client)")
    name = body.pop("type", None)
    cls = MESSAGES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise CodecError(f"unknown message type {name!r} (known: {', '.join(MESSAGES)})")
    if expect is not None and cls not in expect:
        raise CodecError(f"unexpected message {name!r} here (expected "
                         f"{' or '.join(c.type for c in expect)})")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise CodecError(f"{name}: unknown field(s) {unknown}")
    values = {}
    for fname, f in fields.items():
        if fname not in body:
            if f.default is dataclasses.MISSING:
                raise CodecError(f"{name}.{fname}: missing")
            continue
        values[fname] = _check_value(f.metadata["kind"], body[fname], f"{name}.{fname}")
    return cls(**values)


# ----------------------------------------------------------------------------- data, not code
def optimizer_spec(opt: Any) -> dict | None:
    """A client optimizer as plain data ``{"name": registry name, <hyperparameter>: value}``
    (:func:`fedopt.optim.registry.make` rebuilds it); None for None. ValueError when it is not
    a registered optimizer or has a tensor (per-client) hyperparameter."""
    if opt is None:
        return None
    from fedopt.optim.registry import REGISTRY

    names = [k for k, cls in REGISTRY.items() if type(opt) is cls]
    if not names:
        raise ValueError(f"client optimizer {type(opt).__name__} is not a registered optimizer "
                         f"(fedopt.optim.registry): it cannot be sent to gRPC clients")
    spec: dict[str, Any] = {"name": names[0]}
    for f in dataclasses.fields(opt):
        value = getattr(opt, f.name)
        if isinstance(value, tuple):
            value = list(value)
        ok = value is None or isinstance(value, (bool, int, float, str)) or (
            isinstance(value, list) and all(isinstance(v, (int, float)) for v in value))
        if not ok:
            raise ValueError(f"client optimizer {names[0]}.{f.name} is a "
                             f"{type(value).__name__}: only plain hyperparameters travel to "
                             f"gRPC clients")
        spec[f.name] = value
    return spec


def build_optimizer(spec: dict | None) -> Any:
    """The optimizer of an :func:`optimizer_spec` (None for None); CodecError when invalid."""
    if spec is None:
        return None
    from fedopt.optim.registry import from_config

    try:
        return from_config(spec)
    except (ValueError, TypeError, KeyError) as e:
        raise CodecError(f"task.optimizer: {e}") from None


def describe(obj: Any) -> str:
    """A process-independent description of a local program (dataclasses, tuples, names of
    functions by ``module.qualname``): equal on both sides when they run the same program."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        inner = ", ".join(f"{f.name}={describe(getattr(obj, f.name))}"
                          for f in dataclasses.fields(obj))
        return f"{type(obj).__qualname__}({inner})"
    if isinstance(obj, (tuple, list)):
        return "(" + ", ".join(describe(v) for v in obj) + ")"
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{k!r}: {describe(v)}" for k, v in obj.items()) + "}"
    if callable(obj) and hasattr(obj, "__qualname__"):
        return f"{getattr(obj, '__module__', '?')}.{obj.__qualname__}"
    if isinstance(obj, (str, int, float, bool, type(None))):
        return repr(obj)
    return f"{type(obj).__module__}.{type(obj).__qualname__}"
