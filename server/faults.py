"""The record of what went wrong on a live executor's workers, and what was done about it —
transport-independent (used by :mod:`fedopt.server.dispatch`, the Ray executor and the gRPC
fleet), with the errors a failed worker or pool raises. Messages name the transport that ran
(:data:`WORKERS`: a Ray worker, a gRPC client process), given as ``executor`` to
:class:`FaultLog` and :class:`WorkerFailedError`.

``counts`` (exposed as ``Executor.faults()``, e.g. ``RayExecutor.faults()``) are cumulative
over the run:

* ``worker_deaths``   a call failed because its actor died (killed, crashed, node lost);
* ``timeouts``        a call ran past ``executor.round_timeout_s`` (its worker is a straggler);
* ``restarts``        replacement actors started for dead or hung workers;
* ``retried_shards``  shards (sets of clients) sent again after a death or a timeout;
* ``dropped_clients`` client updates left out of a round under the ``drop`` straggler policy.

``events`` keeps one :class:`FaultEvent` per incident (round, worker slot, clients, detail) and
every incident is also logged as a warning on the ``server.<executor>`` logger
(``server.ray``, ``server.grpc``).

When a worker failure outlives ``executor.max_retries`` (the same clients' call died, or timed out
where per-client results are required, once more than allowed) the executor raises
:class:`WorkerFailedError`: one readable message naming the setting, the worker, the clients and
the cause, printed by the ``fedopt`` CLI as one ``error:`` line.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

#: what a worker of each executor is called in messages: (name, the worker's slot, checks)
WORKERS = {
    "ray": ("Ray worker {slot}", "the workers (memory, killed processes, lost nodes)"),
    "grpc": ("gRPC client process (slot {slot})",
             "the client processes (killed or crashed processes, their network, their logs)"),
}


def _worker(executor: str, slot) -> tuple[str, str]:
    """The worker's name in a message and what to check, for ``executor`` (any name)."""
    name, check = WORKERS.get(executor, (f"{executor} worker {{slot}}", "the workers"))
    return name.format(slot=slot), check


#: clients named in a :class:`WorkerFailedError` message before "... (N in all)"
SHOWN_CLIENTS = 10


class WorkerFailedError(RuntimeError):
    """Clients' calls failed more than ``executor.max_retries`` times (a worker died, or did
    not answer within ``executor.round_timeout_s`` where per-client results are required).

    Attributes: ``clients`` (ids), ``round_idx`` (0-based; for a real-time job its start
    version), ``slot`` (the worker of the last attempt), ``attempts``, ``max_retries``,
    ``cause`` (one line), ``executor`` (the transport's name, :data:`WORKERS`)."""

    def __init__(self, *, clients, round_idx: int | None, slot: int | None, attempts: int,
                 max_retries: int, cause: str, what: str = "died",
                 executor: str = "ray"):
        self.clients = [int(c) for c in clients]
        self.round_idx, self.slot, self.attempts = round_idx, slot, int(attempts)
        self.max_retries, self.cause = int(max_retries), cause
        shown = ", ".join(map(str, self.clients[:SHOWN_CLIENTS]))
        more = (f", ... ({len(self.clients)} in all)" if len(self.clients) > SHOWN_CLIENTS
                else "")
        where = "" if round_idx is None else f"round {int(round_idx) + 1}: "
        times = "once" if self.attempts == 1 else f"{self.attempts} times"
        plural = "s" if len(self.clients) != 1 else ""
        self.executor = executor
        worker, check = _worker(executor, slot)
        super().__init__(
            f"{where}{worker} {what} running client{plural} {shown}{more}; the call "
            f"failed {times} (1 try + executor.max_retries={self.max_retries} re-sends; cause: "
            f"{cause}). Raise executor.max_retries"
            f"{' or executor.round_timeout_s' if what == 'timed out' else ''}, or check {check}")


class RayPoolError(RuntimeError):
    """The Ray worker pool cannot run clients at all: the workers cannot be placed on the
    cluster, they did not start in time, one failed to start, or none is alive and none could be
    restarted. Printed by the CLI as one line."""


def failure_cause(exc: BaseException) -> str:
    """One line for ``exc``: its type and the first line of its message (at most 200 chars)."""
    text = str(exc).strip().splitlines()
    first = text[0].strip().rstrip(".") if text else ""
    if len(first) > 200:
        first = first[:197] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


FAULT_KINDS = ("worker_deaths", "timeouts", "restarts", "retried_shards", "dropped_clients")


@dataclass
class FaultEvent:
    kind: str
    round_idx: int | None
    slot: int | None
    clients: list[int]
    detail: str
    time: float = field(default_factory=time.time)


class FaultLog:
    """Counters plus a list of events; :meth:`record` updates both and logs a warning on
    ``server.<executor>`` (``executor``: the transport's name, ``"ray"`` or ``"grpc"``)."""

    def __init__(self, executor: str = "ray") -> None:
        self.executor = executor
        self.log = logging.getLogger(f"server.{executor}")
        self.counts: dict[str, int] = {k: 0 for k in FAULT_KINDS}
        self.events: list[FaultEvent] = []

    def record(self, kind: str, *, round_idx: int | None = None, slot: int | None = None,
               clients=(), detail: str = "", count: int = 1) -> None:
        if kind not in self.counts:
            raise KeyError(f"unknown fault kind {kind!r} (one of {', '.join(FAULT_KINDS)})")
        self.counts[kind] += int(count)
        ev = FaultEvent(kind, round_idx, slot, [int(c) for c in clients], detail)
        self.events.append(ev)
        self.log.warning("%s executor: %s (round %s, worker %s, %d clients): %s", self.executor,
                         kind, round_idx, slot, len(ev.clients), detail)

    def summary(self) -> dict[str, int]:
        return dict(self.counts)

    def to_dicts(self) -> list[dict]:
        return [asdict(e) for e in self.events]
