"""Shared pieces of the gRPC tests: free loopback ports, token files, certificates, raw calls."""
from __future__ import annotations

import copy
import datetime
import ipaddress
import secrets
import socket
from pathlib import Path

import grpc
import numpy as np

from fedopt.protocols import grpc_messages as M
from fedopt.protocols.grpc_wire import (TOKEN_KEY, frame_bytes, join, method, read_frame,
                                        split)
from tests.server.ray_fixtures import BASE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_tokens(path: Path, n: int) -> list[str]:
    tokens = [secrets.token_hex(16) for _ in range(n)]
    path.write_text("\n".join(tokens) + "\n")
    return tokens


def grpc_config(tokens_file: Path, port: int, **executor) -> dict:
    """The Ray tests' small float64 run (24 clients, logreg) on a gRPC fleet."""
    cfg = copy.deepcopy(BASE)
    cfg["executor"] = {"name": "grpc", "dtype": "float64", "chunk_size": 3,
                       "address": f"127.0.0.1:{port}", "min_clients": 2,
                       "tokens": str(tokens_file), "heartbeat_s": 1.0, "shutdown_grace_s": 5.0,
                       "join_timeout_s": 60.0, **executor}
    return cfg


class Raw:
    """Raw calls to a coordinator (what a hostile or broken client can send)."""

    def __init__(self, port: int, token: str | None, credentials=None, host: str = "127.0.0.1"):
        target = f"{host}:{port}"
        self.channel = (grpc.secure_channel(target, credentials) if credentials is not None
                        else grpc.insecure_channel(target))
        self.md = () if token is None else ((TOKEN_KEY, token),)
        kw = {"request_serializer": frame_bytes, "response_deserializer": read_frame}
        self.register_stub = self.channel.unary_unary(method("Register"), **kw)
        self.poll_stub = self.channel.unary_stream(method("Poll"), **kw)
        self.submit_stub = self.channel.stream_unary(method("Submit"), **kw)
        self.heartbeat_stub = self.channel.unary_unary(method("Heartbeat"), **kw)

    def register(self, ids, counts, raw: bytes | None = None, instance: str = "") -> M.Welcome:
        msg = raw if raw is not None else next(split(M.pack(M.Register(
            client_ids=np.asarray(ids, np.int64), counts=np.asarray(counts, np.int64),
            instance=instance))))
        return M.unpack(join([self.register_stub(msg, metadata=self.md, timeout=10)], 1 << 30))

    def poll(self, session: str, wait_s: float = 2.0) -> M.Message:
        frames = self.poll_stub(next(split(M.pack(M.Poll(session=session, wait_s=wait_s)))),
                                metadata=self.md, timeout=30)
        return M.unpack(join(frames, 1 << 30))

    def submit_frames(self, frames) -> M.Ack:
        return M.unpack(join([self.submit_stub(iter(frames), metadata=self.md, timeout=30)],
                             1 << 30))

    def submit(self, msg: M.Message, chunk: int = 1 << 20) -> M.Ack:
        return self.submit_frames(list(split(M.pack_parts(msg), chunk)))

    def close(self) -> None:
        self.channel.close()


def make_certificates(folder: Path) -> dict[str, str]:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, all signed
    by the CA (cryptography, test extra); PEM paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    ca_key = key()
    ca = (x509.CertificateBuilder().subject_name(name("fedopt test CA")).issuer_name(
        name("fedopt test CA")).public_key(ca_key.public_key()).serial_number(
        x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256()))

    def leaf(cn, san):
        k = key()
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
                .public_key(k.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(san), critical=False)
                .sign(ca_key, hashes.SHA256()))
        return k, cert

    out = {}

    def write(stem, k, cert):
        out[f"{stem}_key"] = str(folder / f"{stem}.key")
        out[f"{stem}_cert"] = str(folder / f"{stem}.pem")
        Path(out[f"{stem}_key"]).write_bytes(k.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        Path(out[f"{stem}_cert"]).write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    write("ca", ca_key, ca)
    write("server", *leaf("localhost", [x509.DNSName("localhost"),
                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]))
    write("client", *leaf("client-0", [x509.DNSName("client-0")]))
    return out
