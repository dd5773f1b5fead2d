"""The coordinator service over real loopback gRPC: tokens, refusals, stale and duplicate
results, TLS — on a bare :class:`Coordinator` (no training), each call checked against the
state it may or may not change."""
from __future__ import annotations

import grpc
import numpy as np
import pytest

from fedopt.protocols import grpc_messages as M
from fedopt.protocols.grpc_codec import Limits, encode, param_spec
from fedopt.protocols.grpc_wire import TOKEN_KEY, client_credentials, join, split
from fedopt.server.grpc_executor import start_server
from fedopt.server.grpc_service import Coordinator, read_tokens
from tests.server.grpc_fixtures import Raw, make_certificates, write_tokens

COUNTS = np.array([5, 6, 7, 8], np.int64)
MODEL = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}


@pytest.fixture
def coord(tmp_path):
    tokens = write_tokens(tmp_path / "tokens.txt", 2)
    c = Coordinator(read_tokens(str(tmp_path / "tokens.txt")), config={"seed": 1},
                    counts=COUNTS, num_classes=2, program="P", heartbeat_s=0.5,
                    limits=Limits(max_message_bytes=1 << 20), max_buffered=2)
    server, port = start_server(c, "127.0.0.1:0", None, 1 << 16)
    raws = [Raw(port, t) for t in tokens]
    yield c, port, tokens, raws
    for r in raws:
        r.close()
    server.stop(0)


def _state(c: Coordinator):
    return ([(s.session, s.clients.tolist(), s.registrations) for s in c.slots],
            c.owner.tolist(), sorted(c.tasks))


def _task(c: Coordinator, slot: int, ids) -> object:
    ids = np.asarray(ids, np.int64)
    w = np.ones(len(ids))

    def parts(tid):
        return M.pack_parts(M.Task(task_id=tid, epoch=c.epoch, kind="run", starts=MODEL,
                                   shared=True, client_ids=ids, keys=np.zeros(len(ids), np.int64),
                                   weights=w))
    return c.add_task(slot, "run", ids, parts, param_spec(MODEL), float(w.sum()), False)


def _result(welcome: M.Welcome, task: M.Task, **change) -> M.Result:
    m = len(task.client_ids)
    fields = dict(session=welcome.session, epoch=welcome.epoch, task_id=task.task_id,
                  client_ids=task.client_ids, delta_sum={k: v + 1 for k, v in MODEL.items()},
                  weight_sum=float(task.weights.sum()), loss_sum=1.0, samples=10, updates=m,
                  steps=np.full(m, 3, np.int64), nonfinite=np.zeros(0, np.int64))
    fields.update(change)
    return M.Result(**fields)


def test_register_poll_submit_once(coord):
    c, port, tokens, (a, b) = coord
    wa = a.register([0, 2], COUNTS[[0, 2]])
    assert (wa.slot, wa.epoch, wa.program, wa.config) == (0, c.epoch, "P", {"seed": 1})
    assert c.owner.tolist() == [0, -1, 0, -1]
    t = _task(c, 0, [0, 2])
    task = a.poll(wa.session)
    assert isinstance(task, M.Task) and task.task_id == t.task_id
    assert np.array_equal(task.starts["w"], MODEL["w"])
    ack = a.submit(_result(wa, task), chunk=64)        # many frames, reassembled
    assert ack.ok and t.state == "done"
    assert a.submit(_result(wa, task)).reason.startswith("duplicate")
    got = c.take(t)
    assert np.array_equal(got.delta_sum["b"], MODEL["b"] + 1)
    assert a.submit(_result(wa, task)).reason.startswith("stale")   # taken: not outstanding
    assert isinstance(a.poll(wa.session, wait_s=0.1), M.Idle)


@pytest.mark.parametrize("token", [None, "wrong-token-0123456789abcdef"])
def test_wrong_or_missing_token_is_unauthenticated_and_touches_nothing(coord, token):
    c, port, tokens, (a, b) = coord
    wa = a.register([0], COUNTS[[0]])
    _task(c, 0, [0])
    before = _state(c)
    bad = Raw(port, token)
    for call in (lambda: bad.register([1], COUNTS[[1]]), lambda: bad.poll(wa.session),
                 lambda: bad.submit(M.Failure(session=wa.session, epoch=c.epoch, task_id=0,
                                              error="x"))):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    bad.close()
    assert _state(c) == before
    assert c.tasks[0].state == "queued"


def test_another_slots_session_and_clients_are_refused(coord):
    c, port, tokens, (a, b) = coord
    wa = a.register([0, 1], COUNTS[[0, 1]])
    with pytest.raises(grpc.RpcError) as e:     # b's token, a's clients
        b.register([1, 2], COUNTS[[1, 2]])
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "held by another client process" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:     # b's token, a's session
        b.poll(wa.session)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as e:     # row counts that disagree with the data
        b.register([3], [99])
    assert "row counts differ" in e.value.details()
    assert c.owner.tolist() == [0, 0, -1, -1]


def test_garbage_truncated_and_oversize_messages(coord):
    c, port, tokens, (a, b) = coord
    wa = a.register([0], COUNTS[[0]])
    t = _task(c, 0, [0])
    task = a.poll(wa.session)
    good = list(split(M.pack_parts(_result(wa, task)), 64))
    cases = {
        "garbage": [b"\x00" * 40],
        "truncated stream": good[:-1],
        "frames out of order": [good[1], good[0]] + good[2:],
        "bit-flipped payload": [good[0][:30] + bytes([good[0][30] ^ 0xFF]) + good[0][31:]]
        + good[1:],
        "oversize": list(split(encode({"x": np.zeros(300_000, np.float32)}), 1 << 16)),
        "wrong dtype": list(split(M.pack_parts(_result(wa, task, delta_sum={
            k: v.astype(np.float64) for k, v in MODEL.items()})))),
        "wrong shape": list(split(M.pack_parts(_result(wa, task, delta_sum={
            "w": np.zeros((2, 3), np.float32), "b": MODEL["b"]})))),
        "non-finite": list(split(encode({"v": M.PROTOCOL_VERSION, "type": "result",
                                         "session": wa.session, "epoch": c.epoch,
                                         "task_id": task.task_id, "client_ids": task.client_ids,
                                         "loss_sum": float("nan")}))),
    }
    for what, frames in cases.items():
        with pytest.raises(grpc.RpcError) as e:
            a.submit_frames(frames)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what
        assert t.state == "sent", what                     # nothing counted
    with pytest.raises(grpc.RpcError) as e:
        a.register(None, None, raw=b"\xff" * 10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert a.submit(_result(wa, task)).ok                 # the task still takes a good answer


def test_results_for_expired_or_foreign_tasks_are_refused(coord):
    c, port, tokens, (a, b) = coord
    wa = a.register([0], COUNTS[[0]])
    wb = b.register([1], COUNTS[[1]])
    t = _task(c, 0, [0])
    task = a.poll(wa.session)
    c.cancel(t)                                            # the round timed out
    ack = a.submit(_result(wa, task))
    assert not ack.ok and "expired" in ack.reason and t.result is None
    t2 = _task(c, 0, [0])
    task2 = a.poll(wa.session)
    assert not b.submit(_result(wb, task2)).ok            # another slot's task
    assert not a.submit(_result(wa, task2, epoch="0" * 16)).ok   # a restarted coordinator's
    assert t2.state == "sent"
    assert c.refused == {"stale": 3}


def test_reregistration_hands_unanswered_tasks_to_the_new_session(coord):
    c, port, tokens, (a, b) = coord
    w1 = a.register([0], COUNTS[[0]])
    t = _task(c, 0, [0])
    task = a.poll(w1.session)                             # then the client process dies
    w2 = a.register([0], COUNTS[[0]])                     # and comes back
    assert w2.session != w1.session and t.state == "queued"
    with pytest.raises(grpc.RpcError):                    # the dead session is gone
        a.poll(w1.session)
    again = a.poll(w2.session)
    assert again.task_id == task.task_id
    with pytest.raises(grpc.RpcError) as e:               # the old session's answer
        a.submit(_result(w1, task))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and t.state == "sent"
    assert a.submit(_result(w2, again)).ok


def test_tls_and_mutual_tls(tmp_path):
    pem = make_certificates(tmp_path)
    tokens = write_tokens(tmp_path / "tokens.txt", 1)
    c = Coordinator(tokens, config={}, counts=COUNTS, num_classes=2, program="P")
    server, port = start_server(c, "127.0.0.1:0", {"cert": pem["server_cert"],
                                                    "key": pem["server_key"], "ca": None}, 1 << 16)
    try:
        ok = Raw(port, tokens[0], client_credentials(pem["ca_cert"]), host="localhost")
        assert ok.register([0], COUNTS[[0]]).slot == 0
        plain = Raw(port, tokens[0])
        with pytest.raises(grpc.RpcError) as e:
            plain.register([0], COUNTS[[0]])
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        ok.close(), plain.close()
    finally:
        server.stop(0)
    # mutual TLS: a client without a certificate signed by the CA cannot connect
    server, port = start_server(c, "127.0.0.1:0", {"cert": pem["server_cert"],
                                                    "key": pem["server_key"],
                                                    "ca": pem["ca_cert"]}, 1 << 16)
    try:
        anon = Raw(port, tokens[0], client_credentials(pem["ca_cert"]), host="localhost")
        with pytest.raises(grpc.RpcError):
            anon.register([0], COUNTS[[0]])
        mutual = Raw(port, tokens[0], client_credentials(pem["ca_cert"], pem["client_cert"],
                                                         pem["client_key"]), host="localhost")
        assert mutual.register([0], COUNTS[[0]]).slot == 0
        anon.close(), mutual.close()
    finally:
        server.stop(0)


def test_tokens_file_checks(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("short\n")
    with pytest.raises(ValueError, match="executor.tokens: line\\(s\\) \\[1\\]"):
        read_tokens(str(p))
    p.write_text("a" * 20 + "\n" + "a" * 20 + "\n")
    with pytest.raises(ValueError, match="repeats a token"):
        read_tokens(str(p))
    with pytest.raises(ValueError, match="cannot read"):
        read_tokens(str(tmp_path / "missing"))


def test_idle_polls_of_many_client_processes_do_not_starve_other_calls(tmp_path):
    """Each registered process holds a Poll open while it waits for work; with more processes
    than a fixed thread pool (32 threads), another process's heartbeat queued behind the held
    polls and came late (by up to a poll's wait), so healthy processes could look silent.
    The server's pool grows with the number of tokens."""
    import threading
    import time

    n = 40
    tokens = write_tokens(tmp_path / "tokens.txt", n + 1)
    c = Coordinator(tokens, config={}, counts=np.full(n + 1, 5, np.int64), num_classes=2,
                    program="P", heartbeat_s=5.0)
    server, port = start_server(c, "127.0.0.1:0", None, 1 << 16)
    raws = [Raw(port, t) for t in tokens]
    try:
        sessions = [r.register([i], [5]).session for i, r in enumerate(raws)]

        def idle(i):
            try:
                raws[i].poll(sessions[i], wait_s=20.0)
            except grpc.RpcError:
                pass                       # cancelled when the server stops

        for i in range(n):
            threading.Thread(target=idle, args=(i,), daemon=True).start()
        time.sleep(1.0)                   # the polls are held by now
        t0 = time.monotonic()
        r = raws[n]
        ack = M.unpack(b"".join(bytes(f.chunk) for f in [r.heartbeat_stub(
            next(split(M.pack(M.Heartbeat(session=sessions[n])))), metadata=r.md, timeout=30)]))
        took = time.monotonic() - t0
        assert ack.ok and took < 5.0, f"heartbeat took {took:.1f} s behind {n} held polls"
    finally:
        server.stop(0)
        for r in raws:
            r.close()


def test_a_process_already_silent_makes_its_new_calls_late_at_once():
    """A client process that died rounds ago still owns its clients; each new call to it was
    made a straggler only after one more heartbeat interval of waiting (every round with one
    of its clients sampled took heartbeat_s longer). The transport checks silence first."""
    import time
    from types import SimpleNamespace

    from fedopt.server.dispatch import Call
    from fedopt.server.grpc_executor import _GrpcTransport

    c = Coordinator(["a" * 16, "b" * 16], config={}, counts=COUNTS, num_classes=2, program="P",
                    heartbeat_s=3.0)
    c.slots[1].session = "s"
    c.slots[1].last_seen = time.monotonic() - 60.0          # silent for 20 heartbeats
    t = _task(c, 1, [2])
    transport = _GrpcTransport(SimpleNamespace(coordinator=c), np.array([2]), "run", None,
                               None, None, False, None, 0)
    call = Call(np.array([0]), 1, 0, None, t)
    t0 = time.monotonic()
    assert transport.ready([call], None) == []
    assert time.monotonic() - t0 < 1.5 and call.deadline is not None
    assert call.late == "client process silent for 9 s (3 missed heartbeats)"


def test_a_tls_mismatch_is_named_with_what_to_check(tmp_path):
    """A plaintext client against a TLS coordinator, or a TLS client against a plaintext one,
    only saw 'unreachable ... Socket closed' / 'WRONG_VERSION_NUMBER' for --max-wait seconds;
    the client's hint (from gRPC's real error text) names --ca / executor.tls."""
    from fedopt.client.grpc_client import connection_hint

    pem = make_certificates(tmp_path)
    tokens = write_tokens(tmp_path / "tokens.txt", 1)
    details = {}
    for tls in (True, False):
        c = Coordinator(tokens, config={}, counts=COUNTS, num_classes=2, program="P")
        server, port = start_server(
            c, "127.0.0.1:0", {"cert": pem["server_cert"], "key": pem["server_key"]} if tls
            else None, 1 << 16)
        creds = None if tls else client_credentials(pem["ca_cert"])
        raw = Raw(port, tokens[0], creds, host="localhost")
        try:
            with pytest.raises(grpc.RpcError) as e:
                raw.register([0], [5])
            details[tls] = e.value.details()
        finally:
            raw.close()
            server.stop(0)
    assert "pass --ca" in connection_hint(details[True], tls=False)
    assert "executor.tls" in connection_hint(details[False], tls=True)
    assert connection_hint("failed to connect: Connection refused", tls=False) == ""


def test_client_frames_pass_a_coordinator_with_a_smaller_chunk_bytes(coord):
    """Clients send in frames of the protocol's CHUNK_BYTES (2 MiB; the welcome does not carry
    executor.chunk_bytes); a coordinator configured with smaller frames (here 64 KiB) refused
    every such frame (RESOURCE_EXHAUSTED: larger than max), so each update above its
    chunk_bytes failed and the client re-registered for ever."""
    from fedopt.protocols.grpc_wire import CHUNK_BYTES

    c, port, tokens, (a, b) = coord
    big = {"w": np.zeros(60_000, np.float32)}                  # 240 KB
    ids = np.array([1], np.int64)
    wa = a.register(ids, COUNTS[ids])

    def parts(tid):
        return M.pack_parts(M.Task(task_id=tid, epoch=c.epoch, kind="run", starts=big,
                                   shared=True, client_ids=ids, keys=np.zeros(1, np.int64),
                                   weights=np.ones(1)))
    t = c.add_task(0, "run", ids, parts, param_spec(big), 1.0, False)
    task = a.poll(wa.session)
    ack = a.submit(_result(wa, task, delta_sum={"w": np.ones(60_000, np.float32)}),
                   chunk=CHUNK_BYTES)
    assert ack.ok and t.state == "done"


def test_a_stalled_upload_is_cancelled_and_frees_its_place(tmp_path):
    """An authenticated client that opens a Submit and stops sending (or trickles) held one of
    the max_buffered upload places with no time limit: with all places held, every other
    client's result waited and was refused. An upload now must keep a minimum rate after a
    grace period; the stalled one is cancelled and the next client's result is accepted."""
    import threading
    import time

    tokens = write_tokens(tmp_path / "tokens.txt", 2)
    c = Coordinator(tokens, config={}, counts=COUNTS, num_classes=2, program="P",
                    heartbeat_s=5.0, max_buffered=1, upload_grace_s=1.0, min_upload_rate=1e6)
    server, port = start_server(c, "127.0.0.1:0", None, 1 << 16)
    a, b = Raw(port, tokens[0]), Raw(port, tokens[1])
    try:
        wa, wb = a.register([0], COUNTS[[0]]), b.register([1], COUNTS[[1]])
        _task(c, 0, [0]), _task(c, 1, [1])
        task_a, task_b = a.poll(wa.session), b.poll(wb.session)
        frames = list(split(M.pack_parts(_result(wa, task_a)), 64))
        release = threading.Event()
        outcome = {}

        def stall():
            yield frames[0]
            release.wait(60)              # then nothing: the stream stays open

        def stalled():
            try:
                a.submit_frames(stall())
            except grpc.RpcError as e:
                outcome["code"] = e.code()
        th = threading.Thread(target=stalled, daemon=True)
        th.start()
        time.sleep(0.3)                   # the stalled upload holds the only place
        t0 = time.monotonic()
        ack = b.submit(_result(wb, task_b))
        took = time.monotonic() - t0
        release.set()
        th.join(10)
        assert ack.ok and took < 10.0, took          # before: refused busy after 30 s
        assert outcome["code"] in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED)
        assert c.refused.get("too slow") == 1
    finally:
        a.close(), b.close()
        server.stop(0)


def test_a_stall_after_a_fast_burst_is_cancelled_soon(tmp_path):
    """The average-rate deadline alone let a client send a burst fast and then stall for
    burst / min_rate seconds (up to max_message_mb / min_rate: hours) while holding a place.
    After a frame of n bytes the next must follow within grace_s + n / min_rate."""
    import threading
    import time

    tokens = write_tokens(tmp_path / "tokens.txt", 1)
    c = Coordinator(tokens, config={}, counts=COUNTS, num_classes=2, program="P",
                    max_buffered=1, upload_grace_s=1.0, min_upload_rate=1e9)
    server, port = start_server(c, "127.0.0.1:0", None, 1 << 16)
    a = Raw(port, tokens[0])
    release = threading.Event()
    try:
        wa = a.register([0], COUNTS[[0]])
        _task(c, 0, [0])
        task = a.poll(wa.session)
        frames = list(split(M.pack_parts(_result(wa, task)), 16))
        c.min_upload_rate = sum(len(f) for f in frames) / 10.0   # the average allows ~11 s
        sent = {}

        def burst_then_stall():
            yield from frames[:-1]
            sent["at"] = time.monotonic()
            release.wait(60)
        with pytest.raises(grpc.RpcError):
            a.submit_frames(burst_then_stall())
        assert time.monotonic() - sent["at"] < 5.0         # ~1 s, not ~10 s
        assert c.refused.get("too slow") == 1
    finally:
        release.set()
        a.close()
        server.stop(0)


def test_a_trickling_upload_is_cancelled_as_frames_arrive(tmp_path):
    """Frames that keep coming, but slower than the minimum rate, are cut off at the frame that
    arrives late (DEADLINE_EXCEEDED with the measured rate); nothing is counted."""
    import time

    tokens = write_tokens(tmp_path / "tokens.txt", 1)
    c = Coordinator(tokens, config={}, counts=COUNTS, num_classes=2, program="P",
                    max_buffered=1, upload_grace_s=0.5, min_upload_rate=100.0)
    server, port = start_server(c, "127.0.0.1:0", None, 1 << 16)
    a = Raw(port, tokens[0])
    try:
        wa = a.register([0], COUNTS[[0]])
        t = _task(c, 0, [0])
        task = a.poll(wa.session)
        frames = list(split(M.pack_parts(_result(wa, task)), 16))

        def trickle():
            for f in frames:
                yield f
                time.sleep(0.3)           # 16 bytes per 0.3 s: ~53 bytes/s
        with pytest.raises(grpc.RpcError) as e:
            a.submit_frames(trickle())
        assert e.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
        assert t.state == "sent" and c.refused.get("too slow") == 1
        assert a.submit(_result(wa, task)).ok            # the place was freed
    finally:
        a.close()
        server.stop(0)


def test_the_client_submits_again_while_the_coordinator_is_busy(tmp_path):
    """A "coordinator busy" refusal (every upload place held) was handled like a lost
    connection: the client registered again and retrained the task, adding load to a
    coordinator that was already overloaded. It now submits the same answer again after a
    backoff, and the answer is accepted once a place frees."""
    import threading

    tokens = write_tokens(tmp_path / "tokens.txt", 2)
    c = Coordinator(tokens, config={}, counts=COUNTS, num_classes=2, program="P",
                    max_buffered=1, busy_wait_s=0.1)
    server, port = start_server(c, "127.0.0.1:0", None, 1 << 16)
    a = Raw(port, tokens[0])
    client = _client_on(port, tokens[1])
    client._connect()
    try:
        wa = a.register([0], COUNTS[[0]])
        wb = M.unpack(join([client._stubs["Register"](next(split(M.pack(M.Register(
            client_ids=np.array([1]), counts=COUNTS[[1]])))), metadata=client.metadata)], 1 << 20))
        ta, tb = _task(c, 0, [0]), _task(c, 1, [1])
        task_a = a.poll(wa.session)
        task_b = client._call("Poll", M.Poll(session=wb.session, wait_s=1.0), (M.Task,), 10.0)
        assert a.submit(_result(wa, task_a)).ok           # a's result holds the only place
        registrations = c.slots[1].registrations
        threading.Timer(1.0, c.take, args=(ta,)).start()  # the server folds it in a second
        ack = client.submit(_result(wb, task_b))
        assert ack.ok and tb.state == "done"
        assert c.slots[1].registrations == registrations  # no re-registration
    finally:
        a.close()
        client._channel.close()
        server.stop(0)


def _client_on(port: int, token: str):
    """A GrpcClient with only its transport (no data, no model)."""
    from fedopt.client.grpc_client import GrpcClient, Options

    client = GrpcClient.__new__(GrpcClient)
    client.opts = Options(server=f"127.0.0.1:{port}", token=token, backoff_s=0.1,
                          max_backoff_s=0.2, max_wait_s=30.0)
    client.limits, client.metadata = Limits(), ((TOKEN_KEY, token),)
    client._channel, client.welcome, client.name = None, None, "second"
    client.instance = "b" * 16
    return client


def test_a_second_process_on_a_live_token_is_refused_not_swapped_in(tmp_path):
    """Two processes sharing one token replaced each other's session at every registration
    (each then saw 'session replaced' and registered again), for ever and with no error. A
    registration from another process while the slot's session is live (heard from within 3
    heartbeats) is refused ALREADY_EXISTS, the live session is untouched, and the refused
    process exits 2 naming executor.tokens; once the holder is silent, a newcomer (a
    restarted process) takes over."""
    import threading
    import time

    from fedopt.client.grpc_client import ClientExit

    tokens = write_tokens(tmp_path / "tokens.txt", 1)
    c = Coordinator(tokens, config={}, counts=COUNTS, num_classes=2, program="P",
                    heartbeat_s=0.5)
    server, port = start_server(c, "127.0.0.1:0", None, 1 << 16)
    a = Raw(port, tokens[0])
    second = _client_on(port, tokens[0])
    second._ids, second._counts = np.array([0]), COUNTS[[0]]
    try:
        wa = a.register([0], COUNTS[[0]], instance="a" * 16)
        assert a.register([0], COUNTS[[0]], instance="a" * 16).slot == 0   # itself: fine
        wa = c.slots[0].session
        stop = threading.Event()

        def alive():                        # the holder keeps a poll open (refreshes contact)
            while not stop.is_set():
                try:
                    a.poll(wa, wait_s=0.5)
                except grpc.RpcError:
                    return
        th = threading.Thread(target=alive, daemon=True)
        th.start()
        t0 = time.monotonic()
        with pytest.raises(ClientExit) as e:
            second.register()
        assert e.value.code == 2 and "executor.tokens" in str(e.value)
        assert "in use by another live client process" in str(e.value)
        assert time.monotonic() - t0 < 10.0          # one wait of ~2 s, then the error
        assert c.slots[0].session == wa and c.slots[0].registrations == 2
        stop.set()
        th.join(5)
        time.sleep(1.6)                     # the holder is silent for 3 heartbeats
        w = a.register([0], COUNTS[[0]], instance="c" * 16)
        assert w.session != wa and c.slots[0].instance == "c" * 16
    finally:
        stop.set()
        a.close()
        if second._channel is not None:
            second._channel.close()
        server.stop(0)


def test_a_task_cancelled_while_training_is_not_sent(tmp_path):
    """The heartbeat's answer "task no longer wanted" (the round timed out, the task was
    re-sent) was ignored: the client finished and uploaded an answer the coordinator could
    only refuse as stale, after it took an upload place. The client now drops it unsent."""
    import time

    tokens = write_tokens(tmp_path / "tokens.txt", 1)
    c = Coordinator(tokens, config={}, counts=COUNTS, num_classes=2, program="P",
                    heartbeat_s=0.1)
    server, port = start_server(c, "127.0.0.1:0", None, 1 << 16)
    a = Raw(port, tokens[0])
    client = _client_on(port, tokens[0])
    client._connect()
    try:
        client.welcome = a.register([0], COUNTS[[0]])
        t = _task(c, 0, [0])
        task = a.poll(client.welcome.session)

        refusals = []
        call = client._call

        def recording_call(name, msg, expect, timeout):
            out = call(name, msg, expect, timeout)
            if name == "Heartbeat" and not out.ok:
                refusals.append(out.reason)
            return out
        client._call = recording_call

        def run_task(msg):                  # training, during which the round times out
            c.cancel(t)
            deadline = time.monotonic() + 20.0
            while not refusals and time.monotonic() < deadline:   # a heartbeat hears it
                time.sleep(0.05)
            time.sleep(0.2)
            return _result(client.welcome, msg)
        client.run_task = run_task
        assert client.work(task) is None
        assert refusals and refusals[0] == "task no longer wanted"
        assert c.refused == {} and t.state == "cancelled"   # nothing was uploaded
        t2 = _task(c, 0, [0])                               # a wanted task is still sent
        client.run_task = lambda msg: _result(client.welcome, msg)
        ack = client.work(a.poll(client.welcome.session))
        assert ack.ok and t2.state == "done"
    finally:
        a.close()
        client._channel.close()
        server.stop(0)
