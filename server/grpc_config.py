"""The gRPC executor's ``executor:`` keys (pydantic only: importing this module imports no grpc).

It registers with the core through the entry point ``fedopt.executors: grpc`` (pyproject.toml);
the coordinator service (:mod:`fedopt.server.grpc_service`) and the executor
(:mod:`fedopt.server.grpc_executor`) load on use. ``fedopt serve CONFIG --out DIR`` runs a
config with ``executor: {name: grpc, ...}``; client processes join with ``fedopt client``.
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import BeforeValidator, Field, model_validator

from fedopt.executors import ExecutorConfig, ExecutorEntry
from fedopt.schema import (Bool, NonNegativeInt, PositiveFloat, PositiveInt, Schema, Str, fail,
                           path_like)

Path = Annotated[Str, BeforeValidator(path_like)]


class TLSConfig(Schema):
    """``executor.tls``: the coordinator's certificate (PEM chain) and private key; with
    ``ca``, mutual TLS: every client must present a certificate signed by it."""

    what = "executor.tls"
    cert: Path
    key: Path
    ca: Optional[Path] = None


class GrpcExecutorConfig(ExecutorConfig):
    """``executor: {name: grpc, address: HOST:PORT, min_clients: K, tokens: FILE, tls: ...}``:
    a coordinator service that client processes (``fedopt client``) connect to."""

    what = "executor 'grpc'"
    name: Literal["grpc"] = "grpc"
    address: Str = Field("127.0.0.1:50051", description="HOST:PORT the coordinator listens "
                                                        "on (0.0.0.0:PORT: every interface)")
    min_clients: PositiveInt = Field(1, description="client processes that must be connected "
                                                    "before the first round")
    tokens: Path = Field(description="file with one secret token per line, one per client "
                                     "process (its slot is the line's position)")
    tls: Optional[TLSConfig] = Field(None, description="null: plaintext (loopback only)")
    round_timeout_s: Optional[PositiveFloat] = Field(
        600.0, description="a client slower than this is a straggler (null: wait for ever)")
    max_retries: NonNegativeInt = 2
    on_timeout: Literal["drop", "retry"] = Field(
        "drop", description="a straggling client's jobs: dropped (renormalised FedAvg) or "
                            "re-sent")
    join_timeout_s: PositiveFloat = Field(
        600.0, description="seconds to wait for min_clients (and for a task's client) to connect")
    heartbeat_s: PositiveFloat = Field(5.0, description="seconds between client heartbeats")
    chunk_bytes: PositiveInt = Field(1 << 21, description="bytes per gRPC frame the coordinator "
                                                          "sends (clients send 2 MiB frames)")
    max_message_mb: PositiveFloat = Field(1024.0, description="largest message accepted (MiB)")
    max_buffered_results: PositiveInt = Field(
        4, description="client results held undecoded-into-the-sum at once (memory bound)")
    upload_grace_s: PositiveFloat = Field(
        30.0, description="seconds an upload may take before min_upload_kib_s applies")
    min_upload_kib_s: PositiveFloat = Field(
        64.0, description="slowest upload kept (KiB/s, averaged from its start after "
                          "upload_grace_s; each frame within upload_grace_s + its size at "
                          "this rate): a stalled upload cannot hold a result place")
    shutdown_grace_s: PositiveFloat = Field(
        10.0, description="seconds clients get to hear the shutdown before the server stops")
    realtime: Bool = Field(False, description="asynchronous algorithms on the client processes "
                                              "in real time (server/realtime.py) instead of on "
                                              "the virtual clock")
    seconds_per_unit: Optional[PositiveFloat] = Field(
        None, description="with realtime: seconds per clock unit, the clock's job times are "
                          "injected as delays (null: no delays)")

    @model_validator(mode="after")
    def _consistent(self) -> "GrpcExecutorConfig":
        host, sep, port = self.address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise fail("address", f"expected HOST:PORT (e.g. 0.0.0.0:50051), got "
                                  f"{self.address!r}")
        if self.seconds_per_unit is not None and not self.realtime:
            raise fail("seconds_per_unit", "only acts in real time (executor.realtime: true): "
                                           "set it or remove seconds_per_unit")
        if self.on_timeout == "retry" and self.round_timeout_s is None:
            raise fail("on_timeout", "'retry' only acts with executor.round_timeout_s: set it "
                                     "or remove on_timeout")
        if self.chunk_bytes > (64 << 20):
            raise fail("chunk_bytes", "at most 64 MiB per frame")
        return self


def check_files(ex: dict) -> list[str]:
    """The coordinator host's checks of a valid ``executor:`` section ``ex``: the tokens file
    is readable and usable, holds at least ``min_clients`` tokens, and the TLS files are
    readable; returns the tokens. ValueError naming the field (``executor.tokens``,
    ``executor.min_clients``, ``executor.tls.cert`` ...). Run by ``fedopt validate``,
    ``fedopt serve`` and the executor's start, not by ``fedopt client`` (whose host lacks them)."""
    from fedopt.protocols.grpc_wire import read_pem
    from fedopt.server.grpc_service import read_tokens

    tokens = read_tokens(ex["tokens"])
    if ex["min_clients"] > len(tokens):
        raise ValueError(f"executor.min_clients: {ex['min_clients']} client processes "
                         f"wanted but {ex['tokens']!r} holds {len(tokens)} tokens")
    for k in ("cert", "key", "ca"):
        read_pem((ex.get("tls") or {}).get(k), f"executor.tls.{k}")
    return tokens


ENTRY = ExecutorEntry("grpc", "fedopt.server.grpc_config:GrpcExecutorConfig",
                      "fedopt.server.grpc_executor:GrpcExecutor.from_config",
                      realtime="fedopt.server.realtime:RealTimeAsync.from_config",
                      host_check="fedopt.server.grpc_config:check_files")
