"""Transport-independent dispatch: timeouts, retries, drops and the renormalisation rule.

A coordinator (the Ray executor today, a gRPC fleet next) sends each worker its share of a
call's jobs and gathers the answers. What happens to a share whose worker dies or does not
answer in time is decided here, by a plain :class:`DispatchPolicy` — the same for every
transport — and the scatter/gather loop :func:`gather` runs it over any :class:`Transport`:

* **failed** (the worker died, its node was lost): the share is re-sent — to live workers at
  once, while the transport replaces the dead one — up to ``max_retries`` times, then
  :class:`~server.faults.WorkerFailedError`. Its partial work is never read, so every job
  counts exactly once and the result equals the fault-free one.
* **late** (no answer ``round_timeout_s`` seconds after it was sent): the worker is a straggler;
  the transport replaces it (a hung worker would stall later calls) and the policy decides:

  - jobs whose per-client results are needed (``need_all``: stacked y_i, new client state) are
    re-sent, and the call fails once retries are used up;
  - ``on_timeout="drop"`` (default, FedAvg's rule): the call goes on without them and the
    aggregate is renormalised over the jobs that returned (:func:`renormalise`);
    ``"retry"``: re-sent like a failed share, dropped once retries are used up;
  - a call is never left without any job: when the last outstanding share of a call that has
    nothing yet is late, it is re-sent while retries last.

**Renormalisation** (:func:`renormalise`): a weighted sum Σ_{kept} w_j Δ_j over the jobs that
returned becomes the sum the aggregation rule gives with its weights renormalised over them,
Σ_{kept} w_j Δ_j · Σ_{all} w / Σ_{kept} w (the arithmetic is
:func:`fedopt.engine.executor.drop_scale`, the one copy, also used for non-finite jobs under
``on_nonfinite: drop``); ``weight_sum`` stays Σ_{all} w.
"""
from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fedopt.engine.contract import Params
from fedopt.engine.executor import drop_scale
from fedopt.server.faults import FaultLog, WorkerFailedError

#: ``on_timeout`` values: what happens to a late share whose per-client results are not needed
TIMEOUT_POLICIES = ("drop", "retry")


class Action(enum.Enum):
    RETRY = "retry"     # send the share again (to another worker)
    DROP = "drop"       # go on without its jobs (renormalise over the others)
    FAIL = "fail"       # raise WorkerFailedError


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str         # one line for the fault log


@dataclass(frozen=True)
class DispatchPolicy:
    """What happens to a failed or late share (module docstring): ``max_retries`` re-sends per
    share, ``round_timeout_s`` seconds per call before it is late (None: never), ``on_timeout``
    one of :data:`TIMEOUT_POLICIES`. ValueError naming the setting when out of range."""

    max_retries: int = 2
    round_timeout_s: float | None = None
    on_timeout: str = "drop"

    def __post_init__(self) -> None:
        if isinstance(self.max_retries, bool) or int(self.max_retries) != self.max_retries \
                or self.max_retries < 0:
            raise ValueError(f"max_retries: must be an integer >= 0, got {self.max_retries!r}")
        if self.round_timeout_s is not None and not 0 < self.round_timeout_s < math.inf:
            raise ValueError(f"round_timeout_s: must be > 0 (or null), got "
                             f"{self.round_timeout_s!r}")
        if self.on_timeout not in TIMEOUT_POLICIES:
            raise ValueError(f"on_timeout: one of {TIMEOUT_POLICIES}, got {self.on_timeout!r}")

    def deadline(self, sent_at: float) -> float | None:
        """When a share sent at ``sent_at`` (monotonic seconds) becomes late; None: never."""
        return None if self.round_timeout_s is None else sent_at + float(self.round_timeout_s)

    def on_failure(self, attempt: int) -> Decision:
        """A share's worker died on try ``attempt`` (0: the first send)."""
        if attempt < self.max_retries:
            return Decision(Action.RETRY, "worker died: shard re-sent")
        return Decision(Action.FAIL, "worker died")

    def on_late(self, attempt: int, *, need_all: bool, alone: bool) -> Decision:
        """A share is late on try ``attempt``; ``need_all``: its per-client results are needed;
        ``alone``: nothing of the call has returned and nothing else is outstanding."""
        can_retry = attempt < self.max_retries
        if need_all:
            return (Decision(Action.RETRY, "straggler re-sent (per-client results required)")
                    if can_retry else Decision(Action.FAIL, "timed out"))
        if self.on_timeout == "retry" and can_retry:
            return Decision(Action.RETRY, "straggler re-sent")
        if alone and can_retry:
            return Decision(Action.RETRY, "nothing returned: re-sent")
        return Decision(Action.DROP, f"straggler dropped (on_timeout={self.on_timeout!r})")


def renormalise(delta_sum: Params, loss_sum: float, weight_sum: float, kept_weight: float
                ) -> tuple[Params, float]:
    """FedAvg over the jobs that returned: ``delta_sum`` and ``loss_sum`` (sums over the kept
    jobs, weight ``kept_weight`` = Σ_{kept} w) scaled by Σ_{all} w / Σ_{kept} w
    (:func:`~fedopt.engine.executor.drop_scale`; unchanged when nothing was left out or nothing
    kept)."""
    scale = drop_scale(weight_sum, kept_weight)
    if scale == 1.0:
        return delta_sum, loss_sum
    return {k: v * scale for k, v in delta_sum.items()}, loss_sum * scale


# -- the scatter/gather loop over any transport ------------------------------------------------

class CallFailed(Exception):
    """Raised by :meth:`Transport.result` when a share's worker was lost (``cause``: one line)."""

    def __init__(self, cause: str):
        super().__init__(cause)
        self.cause = cause


@dataclass(eq=False)
class Call:
    """One share in flight: ``positions`` into the call's jobs, the worker ``slot`` it went to,
    the try ``attempt`` (0: first), its ``deadline`` and the transport's ``handle``; ``late``:
    why, when the transport moved the deadline to now (e.g. a process that missed its
    heartbeats), for the fault log and errors instead of ``round_timeout_s``."""

    positions: np.ndarray
    slot: int
    attempt: int
    deadline: float | None
    handle: Any = None
    late: str = ""


class Transport(Protocol):
    """What :func:`gather` needs from a transport (Ray actors, gRPC clients, a test fake)."""

    def send(self, positions: np.ndarray, exclude: set[int]) -> list[tuple[np.ndarray, int, Any]]:
        """Send the jobs at ``positions`` to workers not in ``exclude`` (when possible), split
        as the transport likes; ``(positions, slot, handle)`` per share sent."""
        ...

    def ready(self, calls: list[Call], timeout: float | None) -> list[Call]:
        """The calls that have answered (or failed), waiting up to ``timeout`` seconds for the
        first one (None: no limit); [] on timeout."""
        ...

    def result(self, call: Call) -> Any:
        """The answer of a ready call; :class:`CallFailed` when its worker was lost."""
        ...

    def replace(self, call: Call, reason: str) -> None:
        """The call's worker died or hangs: replace it (its answer, if any, is never read)."""
        ...


@dataclass
class Gathered:
    """What :func:`gather` returns: ``(call, answer)`` pairs, each job in exactly one, in job
    order; how many shares were re-sent; the ids of the jobs dropped."""

    results: list[tuple[Call, Any]]
    retried: int = 0
    dropped: list[int] = field(default_factory=list)


def gather(transport: Transport, ids: np.ndarray, policy: DispatchPolicy, faults: FaultLog,
           key: int | None, need_all: bool, clock=time.monotonic) -> Gathered:
    """Send the jobs of ``ids`` (client ids, one per job) and collect the answers, deciding
    every failed or late share by ``policy`` (module docstring) and recording each incident in
    ``faults`` (``key``: the call's round, for messages). Raises WorkerFailedError."""
    ids = np.asarray(ids, dtype=np.int64)
    pending: list[Call] = []
    out = Gathered([])

    def send(positions: np.ndarray, attempt: int, exclude: set[int] = frozenset()) -> None:
        for pos, slot, handle in transport.send(positions, set(exclude)):
            pending.append(Call(pos, int(slot), attempt, policy.deadline(clock()), handle))

    def resend(call: Call, reason: str) -> None:
        out.retried += 1
        faults.record("retried_shards", round_idx=key, slot=call.slot,
                      clients=ids[call.positions], detail=reason)
        send(call.positions, call.attempt + 1, exclude={call.slot})

    def fail(call: Call, what: str, cause: str) -> WorkerFailedError:
        return WorkerFailedError(clients=ids[call.positions], round_idx=key, slot=call.slot,
                                 attempts=call.attempt + 1, max_retries=policy.max_retries,
                                 what=what, cause=cause, executor=faults.executor)

    send(np.arange(len(ids)), 0)
    while pending:
        deadlines = [c.deadline for c in pending if c.deadline is not None]
        wait_s = None if not deadlines else max(0.0, min(deadlines) - clock())
        for call in transport.ready(list(pending), wait_s):
            pending.remove(call)
            try:
                out.results.append((call, transport.result(call)))
            except CallFailed as e:
                faults.record("worker_deaths", round_idx=key, slot=call.slot,
                              clients=ids[call.positions], detail=e.cause.split(":")[0])
                transport.replace(call, "died")
                decision = policy.on_failure(call.attempt)
                if decision.action is Action.FAIL:
                    raise fail(call, "died", e.cause) from e
                resend(call, decision.reason)
        now = clock()
        for call in [c for c in pending if c.deadline is not None and now >= c.deadline]:
            pending.remove(call)
            faults.record("timeouts", round_idx=key, slot=call.slot, clients=ids[call.positions],
                          detail=call.late or
                          f"no answer within round_timeout_s={policy.round_timeout_s}")
            transport.replace(call, "timed out")
            decision = policy.on_late(call.attempt, need_all=need_all,
                                      alone=not out.results and not pending)
            if decision.action is Action.RETRY:
                resend(call, decision.reason)
            elif decision.action is Action.FAIL:
                why = (call.late or
                       f"no answer within executor.round_timeout_s={policy.round_timeout_s}")
                raise fail(call, "timed out",
                           f"{why}, and this algorithm needs every client's result")
            else:
                out.dropped.extend(ids[call.positions].tolist())
                faults.record("dropped_clients", round_idx=key, slot=call.slot,
                              clients=ids[call.positions], count=len(call.positions),
                              detail=decision.reason)
    out.results.sort(key=lambda cr: int(cr[0].positions[0]))
    return out
