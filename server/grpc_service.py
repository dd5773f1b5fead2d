"""The gRPC coordinator service: who is connected, which tasks are out, which results count.

One :class:`Coordinator` serves the four methods of :mod:`fedopt.protocols.grpc_wire` through
gRPC's generic handlers (no generated code) and is driven by the executor
(:mod:`fedopt.server.grpc_executor`) through :meth:`Coordinator.add_task`, :meth:`wait_done`,
:meth:`take` and :meth:`cancel`.

* **Tokens.** Every call carries a token in its metadata (``fedopt-token``); the tokens file has
  one per line and a token's line is the client process's *slot*. A call without a valid token
  is answered ``UNAUTHENTICATED`` before its body is read: it never touches state.
* **Sessions.** ``Register`` opens a session for the slot (a new one replaces the old: a
  restarted client), claims the client ids it holds (checked against the coordinator's data:
  ids in range, row counts equal, not held by another slot) and returns the run config.
  Calls of a replaced session are refused (``FAILED_PRECONDITION``: register again). Another
  process (another ``Register.instance``) may replace a session only once it has been silent
  for 3 heartbeats; before that it is refused ``ALREADY_EXISTS`` (two processes sharing one
  token would otherwise replace each other's sessions for ever), with the seconds until the
  holder would count as silent in the trailing metadata :data:`RETRY_KEY`.
* **Tasks.** A task goes to the slot holding its clients; ``Poll`` hands it out (streamed in
  frames; a round's shared model is encoded once for all). A task handed to a session that is
  replaced before it answered is handed out again to the new session.
* **Results** are accepted once: for this coordinator's ``epoch``, from the slot's current
  session, for an outstanding task, with the task's client ids and the model's tensor names,
  shapes and dtype, finite. A stale (expired, cancelled, other epoch) or duplicate result is
  refused with ``ok: false`` and a reason, and never aggregated; a malformed one is answered
  ``INVALID_ARGUMENT``. At most ``max_buffered`` uploads and accepted results wait to be folded
  into the sum at once (a ``Submit`` beyond that waits up to ``busy_wait_s`` before reading its
  frames, then is answered ``RESOURCE_EXHAUSTED`` "coordinator busy": the client submits the
  same answer again later) and at most ``2 max_buffered`` tasks stream out at once: bounded
  memory. An upload must keep up a minimum rate: by ``t`` seconds after it began it must have
  sent ``(t - upload_grace_s) min_upload_rate`` bytes, and a frame of ``n`` bytes must follow
  the previous one within ``upload_grace_s + n / min_upload_rate``, else it is cancelled (a
  stalled or trickling upload cannot hold an upload place for ever and block every other
  client).
* **Liveness.** Every call, every frame of a download or upload and every second of a held
  poll refresh the slot's last contact; clients heartbeat while they train. A registered slot
  silent for 3 heartbeats (:meth:`silent`) died or lost its network: the executor makes its
  outstanding jobs stragglers.
* **Shutdown.** :meth:`shutdown` answers every poll with ``Shutdown``.
"""
from __future__ import annotations

import hmac
import logging
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np

from fedopt.protocols import grpc_messages as M
from fedopt.protocols.grpc_codec import CodecError, Limits, ParamSpec, check_params
from fedopt.protocols.grpc_wire import (BUSY, RETRY_KEY, TOKEN_KEY, BadFrame, Frame, join,
                                        split)

log = logging.getLogger("server.grpc")

#: a slot silent for this many heartbeat intervals counts as disconnected
SILENT_HEARTBEATS = 3.0
#: longest a Poll is held open on the coordinator
MAX_POLL_S = 30.0
#: an upload's allowance before any byte must have arrived (s), and the slowest rate it may
#: then keep up (bytes/s): 64 KiB/s moves a 100 MB update in 26 minutes
UPLOAD_GRACE_S = 30.0
MIN_UPLOAD_RATE = float(64 << 10)


class CoordinatorError(RuntimeError):
    """The fleet cannot run: clients did not connect in time, a tokens file is unusable, ..."""


def read_tokens(path: str) -> list[str]:
    """The tokens of a tokens file (one per non-empty line, surrounding blanks stripped);
    ValueError naming ``executor.tokens`` when unreadable, empty, duplicated or too short."""
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError as e:
        raise ValueError(f"executor.tokens: cannot read {path!r} ({e.strerror or e})") from None
    tokens = [t.strip() for t in lines if t.strip()]
    if not tokens:
        raise ValueError(f"executor.tokens: {path!r} holds no token (one per line)")
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"executor.tokens: {path!r} repeats a token (one per client process)")
    short = [i for i, t in enumerate(tokens) if len(t) < 16]
    if short:
        raise ValueError(f"executor.tokens: line(s) {[i + 1 for i in short]} of {path!r} are "
                         f"shorter than 16 characters (use e.g. python -c 'import secrets; "
                         f"print(secrets.token_hex(16))')")
    return tokens


@dataclass
class Slot:
    index: int
    session: str | None = None
    clients: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    name: str = ""
    last_seen: float = 0.0
    registrations: int = 0
    instance: str = ""
    told_shutdown: bool = False
    queue: deque = field(default_factory=deque)   # task ids to hand out


@dataclass(eq=False)
class ServerTask:
    """A task of one slot: its wire parts, what a valid answer looks like, and its state
    (``queued`` -> ``sent`` -> ``done`` | ``failed``; ``cancelled`` at any time)."""

    task_id: int
    slot: int
    kind: str
    client_ids: np.ndarray
    parts: list[bytes]
    spec: ParamSpec
    weight_sum: float
    keep_local: bool
    state: str = "queued"
    session: str | None = None
    result: M.Result | None = None
    error: str | None = None
    buffered: bool = False
    arrived: float = 0.0          # time.time() when its answer was accepted


class UploadWatch:
    """The deadline of one upload (monotonic s): ``start + grace_s + received / min_rate`` (the
    average rate), and at most ``grace_s + last / min_rate`` after the last frame of ``last``
    bytes (no long stall after a fast burst: the next frame, of about that size, must follow).
    :meth:`arrived` counts a frame's bytes and says whether the upload is still on time; a
    watchdog thread calls ``on_late()`` (the handler's ``context.cancel``) when the deadline
    passes with no frame arriving (a stall: the handler is blocked reading the next frame)."""

    def __init__(self, grace_s: float, min_rate: float, on_late: Any):
        self.start = self.last_at = time.monotonic()
        self.grace_s, self.min_rate, self.on_late = grace_s, min_rate, on_late
        self.received = self.last = 0
        self.late = self.counted = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True,
                                        name="fedopt-upload-watch")
        self._thread.start()

    def deadline(self) -> float:
        return min(self.start + self.grace_s + self.received / self.min_rate,
                   self.last_at + self.grace_s + self.last / self.min_rate)

    def arrived(self, nbytes: int) -> bool:
        """Count ``nbytes`` received; False when the upload is already behind its deadline."""
        now = time.monotonic()
        if now > self.deadline():
            self.late = True
        self.received += nbytes
        self.last, self.last_at = nbytes, now
        return not self.late

    def _watch(self) -> None:
        while not self._done.wait(max(self.deadline() - time.monotonic(), 0.0) + 0.01):
            if time.monotonic() > self.deadline():
                self.late = True
                self.on_late()
                return

    def close(self) -> None:
        self._done.set()


class Coordinator:
    """The service's state and handlers (module docstring)."""

    def __init__(self, tokens: list[str], *, config: dict, counts: np.ndarray, num_classes: int,
                 program: str,
                 heartbeat_s: float = 5.0, chunk_bytes: int = 1 << 21,
                 limits: Limits = Limits(), max_buffered: int = 4,
                 busy_wait_s: float = MAX_POLL_S, upload_grace_s: float = UPLOAD_GRACE_S,
                 min_upload_rate: float = MIN_UPLOAD_RATE):
        self.tokens = [t.encode() for t in tokens]
        self.slots = [Slot(i) for i in range(len(tokens))]
        self.config, self.program, self.num_classes = config, program, int(num_classes)
        self.counts = np.asarray(counts, dtype=np.int64)
        self.heartbeat_s, self.chunk_bytes, self.limits = heartbeat_s, chunk_bytes, limits
        self.busy_wait_s, self.upload_grace_s = busy_wait_s, upload_grace_s
        self.min_upload_rate = min_upload_rate
        self.epoch = secrets.token_hex(8)
        self.owner = np.full(len(self.counts), -1, dtype=np.int64)
        self.tasks: dict[int, ServerTask] = {}
        self.cond = threading.Condition()
        self.max_buffered = max_buffered
        self.buffer = threading.BoundedSemaphore(max_buffered)
        #: task downloads streaming at once (each holds a frame or two in gRPC's buffers)
        self.sending = threading.BoundedSemaphore(2 * max_buffered)
        self.next_task = 0
        self.closing: str | None = None
        self.refused: dict[str, int] = {}   # why results were refused: count

    # -- authentication --------------------------------------------------------------------
    def _slot_of(self, context: Any) -> int:
        """The slot of the call's token; aborts UNAUTHENTICATED (nothing else is read)."""
        import grpc

        given = b""
        for k, v in context.invocation_metadata() or ():
            if k == TOKEN_KEY:
                given = v.encode() if isinstance(v, str) else bytes(v)
        found = -1
        for i, t in enumerate(self.tokens):   # compare with every token: constant time
            if hmac.compare_digest(given, t):
                found = i
        if found < 0:
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "missing or unknown token (metadata 'fedopt-token')")
        return found

    def _message(self, frame: Frame | BadFrame, context: Any, expect: tuple) -> M.Message:
        import grpc

        try:
            return M.unpack(join([frame], self.limits.max_message_bytes), expect, self.limits)
        except CodecError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

    def _session(self, slot: int, session: str, context: Any) -> Slot:
        import grpc

        s = self.slots[slot]
        if s.session is None or not hmac.compare_digest(session.encode(), s.session.encode()):
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          "session unknown or replaced (the coordinator restarted or this "
                          "client registered again): register again")
        s.last_seen = time.monotonic()
        return s

    # -- handlers --------------------------------------------------------------------------
    def register(self, frame: Frame | BadFrame, context: Any) -> bytes:
        import grpc

        slot = self._slot_of(context)
        msg = self._message(frame, context, (M.Register,))
        ids, counts = msg.client_ids, msg.counts
        n = len(self.counts)
        problem = None
        if ids.size == 0 or ids.shape != counts.shape:
            problem = "client_ids must be non-empty, with one row count each"
        elif ids.min() < 0 or ids.max() >= n:
            problem = f"client ids must lie in 0..{n - 1}"
        elif np.unique(ids).size != ids.size:
            problem = "client ids repeat"
        elif not np.array_equal(self.counts[ids], counts):
            bad = ids[self.counts[ids] != counts][:10].tolist()
            problem = (f"clients {bad}: row counts differ from the coordinator's data set "
                       f"(same data config and seed on both sides?)")
        with self.cond:
            if problem is None:
                taken = ids[(self.owner[ids] >= 0) & (self.owner[ids] != slot)]
                if taken.size:
                    problem = (f"clients {taken[:10].tolist()} are held by another client "
                               f"process (slot {int(self.owner[taken[0]])})")
            if problem is not None:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, problem)
            s = self.slots[slot]
            quiet = time.monotonic() - s.last_seen
            window = SILENT_HEARTBEATS * self.heartbeat_s
            if s.session is not None and s.instance != msg.instance and quiet < window:
                log.warning("grpc: slot %d: refused a second client process (%s) using the "
                            "token of live process %s", slot, msg.name or "?", s.name or "?")
                context.set_trailing_metadata(((RETRY_KEY, f"{window - quiet:.3f}"),))
                context.abort(grpc.StatusCode.ALREADY_EXISTS,
                              f"the token of slot {slot} is in use by another live client "
                              f"process ({s.name or 'unnamed'}, heard from {quiet:.1f} s ago): "
                              f"each client process needs its own token (one line of "
                              f"executor.tokens each); a process that died frees its token "
                              f"after {window:g} s of silence")
            self.owner[s.clients] = -1
            self.owner[ids] = slot
            s.clients, s.name, s.instance = ids.copy(), msg.name, msg.instance
            s.session = secrets.token_hex(16)
            s.registrations += 1
            s.last_seen = time.monotonic()
            # tasks handed to the replaced session go out again to this one
            for t in self.tasks.values():
                if t.slot == slot and t.state == "sent":
                    t.state, t.session = "queued", None
                    s.queue.appendleft(t.task_id)
            self.cond.notify_all()
            session = s.session
        log.info("grpc: slot %d registered (%s, %d clients, registration %d)", slot, msg.name,
                 ids.size, s.registrations)
        welcome = M.Welcome(session=session, epoch=self.epoch, slot=slot, config=self.config,
                            num_clients=n, counts=self.counts,
                            num_classes=self.num_classes, program=self.program,
                            heartbeat_s=self.heartbeat_s)
        return next(split(M.pack(welcome), 1 << 62))

    def poll(self, frame: Frame | BadFrame, context: Any) -> Iterator[bytes]:
        slot = self._slot_of(context)
        msg = self._message(frame, context, (M.Poll,))
        deadline = time.monotonic() + min(max(msg.wait_s, 0.0), MAX_POLL_S)
        with self.cond:
            s = self._session(slot, msg.session, context)
            task = None
            while True:
                if self.closing is not None:
                    out: Any = M.pack(M.Shutdown(reason=self.closing))
                    s.told_shutdown = True
                    break
                while s.queue:
                    t = self.tasks.get(s.queue.popleft())
                    if t is not None and t.state == "queued":
                        task = t
                        break
                if task is not None:
                    task.state, task.session = "sent", s.session
                    out = task.parts
                    break
                left = deadline - time.monotonic()
                if left <= 0 or not context.is_active() or s.session != msg.session:
                    out = M.pack(M.Idle())
                    break
                self.cond.wait(min(left, 1.0))
                s.last_seen = time.monotonic()      # a held poll: the client is there
        if task is None:
            yield from split(out, self.chunk_bytes)
            return
        with self.sending:
            for frame in split(out, self.chunk_bytes):
                s.last_seen = time.monotonic()      # downloading: not silent
                yield frame

    def submit(self, frames: Iterable[Frame | BadFrame], context: Any) -> bytes:
        import grpc

        slot = self._slot_of(context)
        if not self.buffer.acquire(timeout=self.busy_wait_s):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"{BUSY} ({self.max_buffered} uploads or unread results "
                          f"held): submit the same answer again later")
        keep = False
        def late() -> None:                 # the watchdog: count it, then cut the stream
            self._count_slow(slot, watch)
            context.cancel()
        watch = UploadWatch(self.upload_grace_s, self.min_upload_rate, late)
        try:
            def seen(frames=frames, s=self.slots[slot]):
                for f in frames:                    # uploading: not silent
                    s.last_seen = time.monotonic()
                    if not watch.arrived(f.chunk.nbytes if isinstance(f, Frame) else 0):
                        break
                    yield f

            try:
                payload = join(seen(), self.limits.max_message_bytes)
                msg = M.unpack(payload, (M.Result, M.Failure), self.limits)
            except CodecError as e:
                if watch.late:
                    self._too_slow(slot, watch, context)
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            except Exception:
                if watch.late:      # cancelled by the watchdog while waiting for a frame
                    self._too_slow(slot, watch, context)
                raise
            watch.close()
            with self.cond:
                self._session(slot, msg.session, context)
                reason = self._stale(slot, msg)
                if reason is None and isinstance(msg, M.Result):
                    task = self.tasks[msg.task_id]
                    try:
                        self._check_result(task, msg)
                    except CodecError as e:
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
                if reason is not None:
                    self.refused[reason.split(":")[0]] = self.refused.get(
                        reason.split(":")[0], 0) + 1
                    log.warning("grpc: slot %d: result refused: %s", slot, reason)
                    return next(split(M.pack(M.Ack(ok=False, reason=reason)), 1 << 62))
                task = self.tasks[msg.task_id]
                if isinstance(msg, M.Failure):
                    task.state, task.error = "failed", f"client reported: {msg.error}"
                else:
                    task.state, task.result, task.buffered = "done", msg, True
                    task.arrived = time.time()
                    keep = True
                self.cond.notify_all()
            return next(split(M.pack(M.Ack(ok=True)), 1 << 62))
        finally:
            watch.close()
            if not keep:
                self.buffer.release()

    def _count_slow(self, slot: int, watch: UploadWatch) -> None:
        """Log and count a too slow upload, once."""
        with self.cond:
            if watch.counted:
                return
            watch.counted = True
            self.refused["too slow"] = self.refused.get("too slow", 0) + 1
        log.warning("grpc: slot %d: upload cancelled: %d bytes in %.1f s (below %g bytes/s "
                    "after %g s)", slot, watch.received, time.monotonic() - watch.start,
                    self.min_upload_rate, self.upload_grace_s)

    def _too_slow(self, slot: int, watch: UploadWatch, context: Any) -> None:
        import grpc

        self._count_slow(slot, watch)
        took = time.monotonic() - watch.start
        context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                      f"upload too slow: {watch.received} bytes in {took:.1f} s (at least "
                      f"{self.min_upload_rate:g} bytes/s after {self.upload_grace_s:g} s)")

    def heartbeat(self, frame: Frame | BadFrame, context: Any) -> bytes:
        slot = self._slot_of(context)
        msg = self._message(frame, context, (M.Heartbeat,))
        with self.cond:
            self._session(slot, msg.session, context)
            t = self.tasks.get(msg.task_id)
            ok = msg.task_id < 0 or (t is not None and t.state == "sent")
        return next(split(M.pack(M.Ack(ok=ok, reason="" if ok else "task no longer wanted")),
                          1 << 62))

    # -- result checks ---------------------------------------------------------------------
    def _stale(self, slot: int, msg: M.Result | M.Failure) -> str | None:
        """Why a result may not count (None: it may), under the lock."""
        if msg.epoch != self.epoch:
            return "stale: another coordinator epoch (the coordinator restarted)"
        t = self.tasks.get(msg.task_id)
        if t is None or t.slot != slot:
            return f"stale: task {msg.task_id} is not outstanding for this client"
        if t.state == "cancelled":
            return f"stale: task {msg.task_id} expired (round timed out or was re-sent)"
        if t.state in ("done", "failed"):
            return f"duplicate: task {msg.task_id} was already answered"
        if t.state != "sent" or t.session != msg.session:
            return f"stale: task {msg.task_id} was not handed to this session"
        return None

    def _check_result(self, task: ServerTask, r: M.Result) -> None:
        m = len(task.client_ids)
        if not np.array_equal(r.client_ids, task.client_ids):
            raise CodecError(f"result.client_ids differ from task {task.task_id}'s")
        if task.kind == "grad":
            r_grads = check_params(r.grads, {k: ((m,) + s, d) for k, (s, d) in task.spec.items()},
                                   "result.grads")
            del r_grads
            return
        check_params(r.delta_sum, task.spec, "result.delta_sum")
        if r.steps is None or r.steps.shape != (m,):
            raise CodecError(f"result.steps: one per job ({m}) expected")
        nf = np.zeros(0, np.int64) if r.nonfinite is None else r.nonfinite
        if nf.size and (nf.min() < 0 or nf.max() >= m or np.unique(nf).size != nf.size):
            raise CodecError(f"result.nonfinite: distinct positions in 0..{m - 1} expected")
        if not 0 <= r.updates <= m or r.samples < 0:
            raise CodecError("result.updates/samples out of range")
        if abs(r.weight_sum - task.weight_sum) > 1e-9 * max(1.0, abs(task.weight_sum)):
            raise CodecError(f"result.weight_sum {r.weight_sum} is not the task's "
                             f"{task.weight_sum}")
        if task.keep_local:
            check_params(r.local_params, {k: ((m,) + s, d) for k, (s, d) in task.spec.items()},
                         "result.local_params")
            if r.local_loss is None or r.local_loss.shape != (m,):
                raise CodecError(f"result.local_loss: one per job ({m}) expected")

    # -- the executor's side ---------------------------------------------------------------
    def add_task(self, slot: int, kind: str, client_ids: np.ndarray, parts_of: Any,
                 spec: ParamSpec, weight_sum: float, keep_local: bool) -> ServerTask:
        """Queue a task for ``slot``; ``parts_of(task_id)`` gives its wire parts."""
        with self.cond:
            tid = self.next_task
            self.next_task += 1
            t = ServerTask(tid, slot, kind, np.asarray(client_ids, np.int64), parts_of(tid),
                           spec, float(weight_sum), keep_local)
            self.tasks[tid] = t
            self.slots[slot].queue.append(tid)
            self.cond.notify_all()
            return t

    def wait_done(self, tasks: list[ServerTask], timeout: float | None) -> list[ServerTask]:
        """The tasks answered (done or failed), waiting up to ``timeout`` for the first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while True:
                ready = [t for t in tasks if t.state in ("done", "failed")]
                if ready:
                    return ready
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return []
                self.cond.wait(1.0 if left is None else min(left, 1.0))

    def take(self, task: ServerTask) -> M.Result:
        """The result of a done task, handed over once (frees its buffer place)."""
        with self.cond:
            r, task.result = task.result, None
            self._release(task)
            self.tasks.pop(task.task_id, None)
        if r is None:
            raise RuntimeError(f"task {task.task_id} has no result to take")
        return r

    def _release(self, task: ServerTask) -> None:
        if task.buffered:
            task.buffered = False
            self.buffer.release()

    def cancel(self, task: ServerTask) -> None:
        """Forget ``task``: it is not handed out any more and its answer is refused."""
        with self.cond:
            if task.state in ("queued", "sent", "done"):
                task.state, task.result = "cancelled", None
            self._release(task)
            self.cond.notify_all()

    def forget(self, task: ServerTask) -> None:
        """Drop a finished task's record (after a failure was read)."""
        with self.cond:
            self._release(task)
            self.tasks.pop(task.task_id, None)

    def owners(self, client_ids: np.ndarray) -> np.ndarray:
        with self.cond:
            return self.owner[np.asarray(client_ids, np.int64)].copy()

    def connected(self) -> list[int]:
        """Slots with a session heard from within 3 heartbeat intervals."""
        now = time.monotonic()
        with self.cond:
            return [s.index for s in self.slots if s.session is not None
                    and now - s.last_seen < SILENT_HEARTBEATS * self.heartbeat_s]

    def silent(self) -> list[int]:
        """Slots whose session has not been heard from for 3 heartbeat intervals (a process
        that died or lost its network; a slot that never registered is not silent, it is
        awaited)."""
        now = time.monotonic()
        with self.cond:
            return [s.index for s in self.slots if s.session is not None
                    and now - s.last_seen >= SILENT_HEARTBEATS * self.heartbeat_s]

    def wait_for(self, ok: Any, timeout: float | None) -> bool:
        """Wait until ``ok()`` (evaluated under the lock) holds; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while not ok():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self.cond.wait(1.0 if left is None else min(left, 1.0))
            return True

    def shutdown(self, reason: str) -> None:
        with self.cond:
            self.closing = reason
            self.cond.notify_all()

    # -- gRPC ------------------------------------------------------------------------------
    def handler(self) -> Any:
        """The generic handler of the service (register it with ``server.add_generic_rpc_handlers``)."""
        import grpc

        from fedopt.protocols.grpc_wire import SERVICE, frame_bytes, read_frame

        kw = {"request_deserializer": read_frame, "response_serializer": frame_bytes}
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Register": grpc.unary_unary_rpc_method_handler(self.register, **kw),
            "Poll": grpc.unary_stream_rpc_method_handler(self.poll, **kw),
            "Submit": grpc.stream_unary_rpc_method_handler(self.submit, **kw),
            "Heartbeat": grpc.unary_unary_rpc_method_handler(self.heartbeat, **kw),
        })

