"""Load on the gRPC coordinator: K concurrent clients on loopback exchanging a ~10 MB model.

    python -m fedopt.simulations.benchmarks.grpc_load [--clients 50] [--mb 10] [--rounds 3]
                                                       [--procs 4]

The coordinator is the real one — :class:`~fedopt.server.grpc_executor.GrpcExecutor.run_jobs`
with a shared start: the model encoded once, one task per client handed out in frames, every
answer reassembled, decoded (strict checks: names, shapes, dtype, finiteness) and folded into
the running sum as it is read (streaming aggregation, at most ``max_buffered_results`` answers
undigested). The K clients are threads of ``--procs`` processes: each registers with its own
token, receives and decodes the model, and answers with a fixed update of the model's size
(encoded every round; no training: this measures the transport, not the math).

Printed, per run: rounds/s and MB/s of client updates through the coordinator
(K × model bytes / round wall time: encode + transfer + reassemble + decode + check + aggregate,
with the model broadcast to every client in the same round), against two baselines measured in
the same run: the same bytes over raw loopback TCP sockets from the same client processes into
one preallocated buffer plus a numpy add into the sum (``raw socket``), and an in-memory copy +
add of the same bytes (``memcpy``); and the coordinator process's peak resident memory against
what holding every update at once would need (K × model).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import secrets
import socket
import struct
import threading
import time

import numpy as np


def _model(mb: float) -> dict[str, np.ndarray]:
    n = int(mb * (1 << 20) / 4)
    return {"layer0.weight": np.full(n // 2, 0.5, np.float32),
            "layer1.weight": np.full(n - n // 2, 0.25, np.float32)}


# ----------------------------------------------------------------------------- client side
def _grpc_client(port: int, token: str, slot: int, stop: threading.Event) -> None:
    import grpc

    from fedopt.protocols import grpc_messages as M
    from fedopt.protocols.grpc_wire import (TOKEN_KEY, channel_options, frame_bytes, join,
                                            method, read_frame, split)

    ch = grpc.insecure_channel(f"127.0.0.1:{port}", options=channel_options(1 << 22))
    kw = {"request_serializer": frame_bytes, "response_deserializer": read_frame}
    md = ((TOKEN_KEY, token),)
    reg = ch.unary_unary(method("Register"), **kw)
    poll = ch.unary_stream(method("Poll"), **kw)
    submit = ch.stream_unary(method("Submit"), **kw)
    hello = M.Register(client_ids=np.array([slot]), counts=np.array([1]))
    w = M.unpack(join([reg(next(split(M.pack(hello))), metadata=md)], 1 << 20))
    update = None
    while not stop.is_set():
        msg = M.unpack(join(poll(next(split(M.pack(M.Poll(session=w.session, wait_s=5.0)))),
                                 metadata=md), 1 << 31))
        if isinstance(msg, M.Shutdown):
            break
        if not isinstance(msg, M.Task):
            continue
        if update is None:
            update = {k: np.full_like(v, 1e-3) for k, v in msg.starts.items()}
        r = M.Result(session=w.session, epoch=w.epoch, task_id=msg.task_id,
                     client_ids=msg.client_ids, delta_sum=update,
                     weight_sum=float(msg.weights.sum()), loss_sum=0.0, samples=1, updates=1,
                     steps=np.ones(1, np.int64), nonfinite=np.zeros(0, np.int64))
        submit(split(M.pack_parts(r), 1 << 21), metadata=md)
    ch.close()


def _raw_client(port: int, nbytes: int, rounds: int) -> None:
    payload = np.full(nbytes // 4, 1e-3, np.float32).tobytes()
    with socket.create_connection(("127.0.0.1", port)) as s:
        for _ in range(rounds):
            if s.recv(1) != b"g":
                return
            s.sendall(struct.pack("<Q", len(payload)))
            s.sendall(payload)


def _worker_process(port: int, tokens: list[str], slots: list[int], raw_port: int,
                    nbytes: int, raw_rounds: int) -> None:
    stop = threading.Event()
    threads = [threading.Thread(target=_grpc_client, args=(port, t, s, stop))
               for t, s in zip(tokens, slots)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    raws = [threading.Thread(target=_raw_client, args=(raw_port, nbytes, raw_rounds))
            for _ in slots]
    for th in raws:
        th.start()
    for th in raws:
        th.join()


# ----------------------------------------------------------------------------- coordinator
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux: KiB


def _fixed_mmap_threshold(nbytes: int = 1 << 20) -> bool:
    """glibc only: serve allocations above ``nbytes`` by mmap, always. By default glibc raises
    its mmap threshold to the largest freed block (up to 32 MiB), after which freed 10 MB
    message buffers stay in the per-thread heaps: resident memory then shows a high-water mark
    of every gRPC thread's buffers, not what is alive. Returns whether it was set."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        return bool(libc.mallopt(-3, int(nbytes)))     # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def run(clients: int, mb: float, rounds: int, procs: int, mallopt: bool = True) -> dict:
    import tracemalloc

    import torch

    fixed = _fixed_mmap_threshold() if mallopt else False

    from fedopt.engine.contract import SharedStart
    from fedopt.protocols.grpc_codec import Limits
    from fedopt.server.dispatch import DispatchPolicy
    from fedopt.server.grpc_executor import GrpcExecutor, start_server
    from fedopt.server.grpc_service import Coordinator

    torch.set_num_threads(1)
    model = {k: torch.from_numpy(v) for k, v in _model(mb).items()}
    nbytes = sum(v.numel() * 4 for v in model.values())
    tokens = [secrets.token_hex(16) for _ in range(clients)]
    coord = Coordinator(tokens, config={}, counts=np.ones(clients, np.int64), num_classes=0,
                        program="", heartbeat_s=30.0, chunk_bytes=1 << 21,
                        limits=Limits(max_message_bytes=int(4 * nbytes)), max_buffered=4)
    server, port = start_server(coord, "127.0.0.1:0", None, 1 << 21, max_workers=clients + 8)
    ex = GrpcExecutor(coord, server, trainer=None, dataset=None, batch_size=1, local_steps=1,
                      local_epochs=None, policy=DispatchPolicy(max_retries=0),
                      join_timeout_s=300.0, shutdown_grace_s=10.0)
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(clients)
    raw_port = lsock.getsockname()[1]
    ctx = mp.get_context("spawn")
    shares = np.array_split(np.arange(clients), procs)
    workers = [ctx.Process(target=_worker_process,
                           args=(port, [tokens[i] for i in s], s.tolist(), raw_port, nbytes,
                                 rounds)) for s in shares if len(s)]
    for w in workers:
        w.start()
    ex.wait_clients(clients, 300.0)
    rss_before = _peak_rss_mb()
    ids = np.arange(clients)
    weights = np.ones(clients)
    ex.run_jobs(SharedStart(model), ids, np.zeros(clients, np.int64), weights)   # warm-up
    times = []
    for r in range(rounds):
        t0 = time.perf_counter()
        out = ex.run_jobs(SharedStart(model), ids, np.full(clients, r + 1), weights)
        times.append(time.perf_counter() - t0)
        expect = clients * 1e-3
        got = float(out.delta_sum["layer0.weight"][0])
        assert abs(got - expect) < 1e-3 * expect, (got, expect)     # every update counted once
    rss_grpc = _peak_rss_mb()
    tracemalloc.start()      # one more round: Python-level buffers alive at once
    ex.run_jobs(SharedStart(model), ids, np.full(clients, rounds + 1), weights)
    traced_peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    ex.close()

    # raw sockets from the same processes: same bytes, one buffer, numpy add
    conns = [lsock.accept()[0] for _ in range(clients)]
    buf = np.empty(nbytes // 4, np.float32)
    acc = np.zeros_like(buf)
    raw_times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        acc[:] = 0
        for c in conns:
            c.sendall(b"g")
        for c in conns:
            (n,) = struct.unpack("<Q", c.recv(8, socket.MSG_WAITALL))
            view = memoryview(buf).cast("B")
            got_n = 0
            while got_n < n:
                got_n += c.recv_into(view[got_n:], n - got_n)
            np.add(acc, buf, out=acc)
        raw_times.append(time.perf_counter() - t0)
    for c in conns:
        c.close()
    lsock.close()
    for w in workers:
        w.join(60)

    src = np.full(nbytes // 4, 1e-3, np.float32)
    t0 = time.perf_counter()
    for _ in range(clients):
        np.copyto(buf, src)
        np.add(acc, buf, out=acc)
    memcpy_s = time.perf_counter() - t0
    mean = float(np.mean(times))
    total_mb = clients * nbytes / 1e6
    return {"clients": clients, "model_mb": nbytes / 1e6, "rounds": rounds,
            "grpc_round_s": mean, "grpc_rounds_per_s": 1 / mean,
            "grpc_mb_per_s": total_mb / mean,
            "raw_socket_mb_per_s": total_mb / float(np.mean(raw_times)),
            "memcpy_mb_per_s": total_mb / memcpy_s,
            "coordinator_rss_before_mb": rss_before, "coordinator_peak_rss_mb": rss_grpc,
            "coordinator_traced_peak_mb": traced_peak, "fixed_mmap_threshold": fixed,
            "all_updates_at_once_mb": total_mb}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--mb", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--procs", type=int, default=4)
    p.add_argument("--default-malloc", action="store_true",
                   help="keep glibc's dynamic mmap threshold (resident memory then keeps freed "
                        "message buffers)")
    a = p.parse_args()
    res = run(a.clients, a.mb, a.rounds, a.procs, mallopt=not a.default_malloc)
    print(f"{res['clients']} clients, model {res['model_mb']:.1f} MB, {res['rounds']} rounds "
          f"(loopback; one process per --procs holds the clients as threads)")
    print(f"  gRPC coordinator : {res['grpc_rounds_per_s']:.3f} rounds/s, "
          f"{res['grpc_mb_per_s']:.0f} MB/s of client updates "
          f"({res['grpc_round_s']:.2f} s per round)")
    print(f"  raw socket + add : {res['raw_socket_mb_per_s']:.0f} MB/s "
          f"(gRPC at {res['grpc_mb_per_s'] / res['raw_socket_mb_per_s']:.2f}x)")
    print(f"  memcpy + add     : {res['memcpy_mb_per_s']:.0f} MB/s")
    print(f"  coordinator peak RSS {res['coordinator_peak_rss_mb']:.0f} MB (before the rounds "
          f"{res['coordinator_rss_before_mb']:.0f} MB; all updates at once would be "
          f"{res['all_updates_at_once_mb']:.0f} MB; glibc mmap threshold fixed: "
          f"{res['fixed_mmap_threshold']})")
    print(f"  coordinator Python-level buffers alive at once (tracemalloc peak over one more "
          f"round): {res['coordinator_traced_peak_mb']:.0f} MB")


if __name__ == "__main__":
    main()
