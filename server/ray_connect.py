"""Connecting to Ray once per run: a local instance, an existing cluster, or a Ray client.

``executor.address``:

* ``null``             ``RAY_ADDRESS`` when it is set (Ray's own convention: a job started with
                        ``ray job submit`` has it, so the run joins that cluster); else start a
                        private local Ray (all cores of this machine) — or, when this process
                        is already connected to Ray (a notebook, a test fixture), use that
                        session;
* ``"auto"``           ``RAY_ADDRESS`` when set, else the cluster this machine belongs to
                        (``ray start --head``);
* ``"local"``          always a new private local Ray, even with ``RAY_ADDRESS`` set;
* ``"host:port"``      join the cluster whose head (GCS) listens there;
* ``"ray://host:port"`` connect through the Ray client server of a remote cluster.

Failing fast, each as one :class:`RayConnectError` line naming ``executor.address`` (``ray.init``
itself would retry for 20-60 s and end with a generic "cannot connect"):

* an address that cannot be reached: a TCP probe first;
* token authentication (Ray >= 2.52, ``RAY_AUTH_MODE=token``; Ray 2.59+ turns it on for local
  clusters): a cluster that requires a token this process does not send. Ray sends a token when
  ``RAY_AUTH_MODE=token`` is set — read from ``RAY_AUTH_TOKEN``, else the file named by
  ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token`` (Ray's documented precedence) — and, for an
  ``auto``-discovered local cluster only, whenever that default file exists. Before
  ``ray.init`` the cluster is asked once, with grpcio (a Ray dependency), the first question
  ``ray.init`` itself asks (the GCS's cluster id; the client server's cluster info for
  ``ray://``), carrying the token Ray would send. Only an ``UNAUTHENTICATED`` answer is acted on;
  any other answer (a future Ray that renames the call, no grpcio) leaves the decision to
  ``ray.init``.

Only Ray's public API is used (``ray.init``, ``ray.is_initialized``, ``ray.exceptions``).
"""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: the recipe printed with every authentication error (README: "Token authentication")
AUTH_RECIPE = ("set RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN_PATH (a file), "
               "RAY_AUTH_TOKEN or ~/.ray/auth_token (`ray get-auth-token` on the head node "
               "prints it)")

#: the first call ``ray.init`` makes, per address form (gRPC method paths)
_PROBE_GCS = "/ray.rpc.NodeInfoGcsService/GetClusterId"
_PROBE_CLIENT = "/ray.rpc.RayletDriver/ClusterInfo"


class RayConnectError(ConnectionError):
    """This run cannot connect to the Ray cluster ``executor.address`` names (unreachable,
    authentication refused, ``ray.init`` failed). One line; the CLI prints it as ``error:``."""


@dataclass(frozen=True)
class RaySession:
    """The Ray connection a run uses; ``started`` is True when this run must shut it down."""

    address: str | None
    started: bool


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``host:port`` / ``ray://host:port``; None for other forms."""
    rest = address.split("://", 1)[1] if "://" in address else address
    rest = rest.split("/", 1)[0]
    if rest.count(":") != 1:
        return None
    host, port = rest.rsplit(":", 1)
    if not host or not port.isdigit():
        return None
    return host, int(port)


def target_address(address: str | None) -> tuple[str | None, str]:
    """The cluster ``executor.address`` means, and where it came from.

    ``(None, "")``: start (or reuse) a local Ray; ``("auto", "")``: let Ray discover this
    machine's cluster; otherwise an explicit address and its source (``"RAY_ADDRESS"`` when it
    came from the environment, else ``""``)."""
    env = os.environ.get("RAY_ADDRESS") or None
    if address is None:
        return (env, "RAY_ADDRESS") if env else (None, "")
    if address == "auto":
        return (env, "RAY_ADDRESS") if env else ("auto", "")
    if address == "local":
        return None, ""
    return address, ""


def _where(address: str, source: str, given: str | None) -> str:
    """``'h:p'`` plus how it was chosen, for messages."""
    if source == "RAY_ADDRESS":
        how = "from RAY_ADDRESS" + (f", executor.address is {given!r}" if given else
                                    ", executor.address unset")
        return f"{address!r} ({how})"
    return repr(address)


def check_reachable(address: str, timeout_s: float = 5.0, given: str | None = None,
                    source: str = "") -> None:
    """Raise :class:`RayConnectError` naming ``executor.address`` unless a TCP connection to the
    address's host:port succeeds within ``timeout_s`` (other address forms pass)."""
    hp = _host_port(address)
    if hp is None:
        return
    try:
        with socket.create_connection(hp, timeout=timeout_s):
            pass
    except OSError as e:
        raise RayConnectError(
            f"executor.address: cannot reach the Ray cluster at {_where(address, source, given)} "
            f"({hp[0]}:{hp[1]}: {e.strerror or e}). Start one with `ray start --head` and use "
            f"executor.address=auto, or give the head's host:port / ray://host:10001") from None


def token_source() -> tuple[str | None, str]:
    """The token Ray would present in token mode and where it is read from (Ray's documented
    precedence: ``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``);
    ``(None, reason)`` when there is none."""
    env = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if env:
        return env, "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        try:
            text = Path(path).expanduser().read_text().strip()
        except OSError as e:
            return None, f"RAY_AUTH_TOKEN_PATH={path} cannot be read ({e.strerror or e})"
        return (text, f"RAY_AUTH_TOKEN_PATH={path}") if text else (
            None, f"RAY_AUTH_TOKEN_PATH={path} is empty")
    default = Path.home() / ".ray" / "auth_token"
    try:
        text = default.read_text().strip()
    except OSError:
        return None, "no RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token"
    return (text, str(default)) if text else (None, f"{default} is empty")


def probe_auth(address: str, token: str | None, timeout_s: float = 5.0) -> bool | None:
    """Ask the cluster at ``address`` (``host:port`` GCS or ``ray://host:port``) the first
    question ``ray.init`` asks, carrying ``token``: False when it answers ``UNAUTHENTICATED``,
    True when it answers, None when nothing can be concluded (no grpcio, no answer, an
    unknown call)."""
    hp = _host_port(address)
    if hp is None:
        return None
    try:
        import grpc
    except ImportError:
        return None
    method = _PROBE_CLIENT if address.startswith("ray://") else _PROBE_GCS
    metadata = [("authorization", f"Bearer {token}")] if token else None
    channel = grpc.insecure_channel(f"{hp[0]}:{hp[1]}")
    try:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        call(b"", timeout=timeout_s, metadata=metadata)
        return True
    except grpc.RpcError as e:
        code = e.code() if hasattr(e, "code") else None
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return False
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.UNIMPLEMENTED):
            return None
        return True     # it answered (e.g. NOT_FOUND for an empty client-server request)
    finally:
        channel.close()


def check_auth(address: str, timeout_s: float = 5.0, given: str | None = None,
               source: str = "") -> None:
    """Raise :class:`RayConnectError` (one line: ``executor.address``, what to set) when the
    cluster at the explicit ``address`` refuses the token this process would send (none unless
    ``RAY_AUTH_MODE=token``) — see the module docstring."""
    mode = (os.environ.get("RAY_AUTH_MODE") or "").strip().lower()
    if mode not in ("", "disabled", "token"):
        return                      # another scheme (e.g. Kubernetes RBAC): Ray's business
    token, origin = token_source() if mode == "token" else (None, "")
    where = _where(address, source, given)
    if mode == "token" and token is None:
        raise RayConnectError(f"executor.address: RAY_AUTH_MODE=token but no token to join "
                              f"the Ray cluster at {where}: {origin}; {AUTH_RECIPE}")
    if probe_auth(address, token, timeout_s) is not False:
        return
    if token is None:
        raise RayConnectError(
            f"executor.address: the Ray cluster at {where} requires token authentication and "
            f"this process sends no token (RAY_AUTH_MODE is "
            f"{os.environ.get('RAY_AUTH_MODE')!r}, not 'token'); {AUTH_RECIPE}")
    raise RayConnectError(
        f"executor.address: the Ray cluster at {where} refused this process's token (from "
        f"{origin}); use the cluster's token: {AUTH_RECIPE}")


def _ray():
    from fedopt.extras import require

    return require("ray", "executor.name: ray")


def connect_ray(address: str | None, *, num_cpus: int | None = None,
                connect_timeout_s: float = 5.0, log_to_driver: bool = True,
                runtime_env: dict | None = None) -> RaySession:
    """``ray.init`` once for this run (see the module docstring); returns what was done.

    ``runtime_env``: Ray's runtime environment of the job (e.g. ``py_modules`` shipping fedopt's
    code to every node; :func:`fedopt.server.ray_runtime.runtime_env`), only when this run
    connects; a session already open in this process keeps its own."""
    ray = _ray()
    init_env = {"runtime_env": runtime_env} if runtime_env else {}
    if ray.is_initialized():
        if address not in (None, "auto", "local"):
            log.info("Ray is already initialized in this process: using that session, not %r", address)
        if runtime_env:
            log.info("Ray is already initialized in this process: its runtime_env is kept")
        return RaySession(address=address, started=False)
    target, source = target_address(address)
    if target is None:
        # address="local": a new private instance, even when this machine runs a cluster that
        # a bare ray.init() would join (ray start --head) or RAY_ADDRESS names
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 log_to_driver=log_to_driver, **init_env)
        return RaySession(address=None, started=True)
    if source:
        log.info("executor.address %r: joining %s from RAY_ADDRESS", address, target)
    if target != "auto":
        check_reachable(target, connect_timeout_s, given=address, source=source)
        check_auth(target, connect_timeout_s, given=address, source=source)
    try:
        ray.init(address=target, log_to_driver=log_to_driver, **init_env)
    except (ConnectionError, TimeoutError, OSError, RuntimeError, ValueError,
            ray.exceptions.RayError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        hint = ""
        if target == "auto" and (os.environ.get("RAY_AUTH_MODE") or "").lower() != "token":
            hint = (" (if that cluster uses token authentication: "
                    + AUTH_RECIPE + ")")
        raise RayConnectError(f"executor.address: cannot connect to Ray at "
                              f"{_where(target, source, address)}: {first}{hint}") from None
    return RaySession(address=target, started=True)
