"""The gRPC executor against the in-process one, with client processes run as threads of the
test (the same GrpcClient loop as ``fedopt client``; real loopback gRPC between them).

Tolerance: float64 runs; the coordinator adds the client processes' partial sums in arrival
order, the in-process executor in chunk order, so results agree to ~1e-12 (checked at 1e-10).
"""
from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest
import torch

from fedopt.client.grpc_client import GrpcClient, Options
from fedopt.config import load_config
from fedopt.engine.contract import SharedStart
from fedopt.protocols import grpc_messages as M
from fedopt.server.grpc_executor import GrpcExecutor
from fedopt.simulation import Simulation
from tests.server.grpc_fixtures import Raw, free_port, grpc_config, write_tokens
from tests.server.ray_fixtures import assert_output_close, make_config


@pytest.fixture(scope="module")
def local_sim():
    return Simulation(load_config(make_config("local")))


def _start_clients(cfg, tokens, shares):
    threads = []
    for token, ids in zip(tokens, shares):
        client = GrpcClient(Options(server=cfg["executor"]["address"], token=token, config=cfg,
                                    clients=np.asarray(ids), poll_s=1.0, max_wait_s=60))
        th = threading.Thread(target=client.serve, daemon=True)
        th.start()
        threads.append((client, th))
    return threads


@pytest.fixture(scope="module")
def fleet(local_sim, tmp_path_factory):
    folder = tmp_path_factory.mktemp("grpc")
    tokens = write_tokens(folder / "tokens.txt", 2)
    cfg = load_config(grpc_config(folder / "tokens.txt", free_port()))
    threads = _start_clients(cfg, tokens, [range(0, 24, 2), range(1, 24, 2)])
    ex = GrpcExecutor.from_config(cfg, local_sim.data, local_sim.trainer)
    yield ex, threads
    ex.close()
    for _, th in threads:
        th.join(10)
        assert not th.is_alive()          # every client process heard the shutdown


def test_round_output_equals_in_process(fleet, local_sim):
    ex, threads = fleet
    ids = local_sim.algorithm.sample_clients(2)
    weights = local_sim.algorithm.weights(ids)
    params = {k: v + 0.05 for k, v in local_sim.state.params.items()}
    corr = {k: 0.02 * torch.randn((len(ids),) + v.shape, dtype=v.dtype,
                                  generator=torch.Generator().manual_seed(0))
            for k, v in params.items()}
    opt = local_sim.client_optimizer.replace(lr=0.02)
    ref = local_sim.executor.run_round(params, ids, weights, 2, optimizer=opt, keep_local=True,
                                       correction=corr)
    got = ex.run_jobs(SharedStart(params), ids, np.full(len(ids), 2), weights, optimizer=opt,
                      correction=corr, keep_local=True)
    assert_output_close(ref, got, keep_local=True)
    # per-job starts (stacked), default optimizer, no correction
    starts = {k: torch.stack([v + 0.01 * j for j in range(len(ids))]) for k, v in params.items()}
    keys = np.arange(len(ids))
    ref = local_sim.executor.run_jobs(starts, ids, keys, weights)
    got = ex.run_jobs(starts, ids, keys, weights)
    assert_output_close(ref, got)
    assert ex.faults()["dropped_clients"] == 0 and ex.faults()["refused_results"] == 0


def test_full_gradients_and_evaluation_equal_in_process(fleet, local_sim):
    ex, _ = fleet
    ids = np.array([0, 5, 7, 22])
    params = local_sim.state.params
    ref = local_sim.executor.full_gradients(params, ids)
    got = ex.full_gradients(params, ids)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=1e-12)
    assert ex.evaluate(params) == local_sim.executor.evaluate(params)
    assert np.array_equal(ex.job_samples(ids), local_sim.executor.job_samples(ids))


@pytest.mark.parametrize("timeouts", [{"round_timeout_s": 1.5, "heartbeat_s": 60.0},
                                      {"round_timeout_s": None, "heartbeat_s": 1.0}],
                         ids=["round_timeout", "missed_heartbeats"])
def test_a_silent_client_is_a_straggler_dropped_and_its_late_answer_refused(local_sim, tmp_path,
                                                                            timeouts, caplog):
    """Slot 1 registers, takes its task and never answers (a process that died mid-round):
    after round_timeout_s — or, without one, once it missed 3 heartbeats — its jobs are
    dropped and the sum renormalised over slot 0's jobs, checked against the in-process
    executor run on those jobs alone."""
    tokens = write_tokens(tmp_path / "tokens.txt", 2)
    cfg = load_config(grpc_config(tmp_path / "tokens.txt", free_port(), max_retries=0,
                                  min_upload_kib_s=32.0, upload_grace_s=20.0, **timeouts))
    evens = np.arange(0, 24, 2)
    threads = _start_clients(cfg, tokens[:1], [evens])
    dead = Raw(int(cfg["executor"]["address"].rsplit(":")[1]), tokens[1])
    odds = np.arange(1, 24, 2)
    counts = local_sim.data.counts.cpu().numpy()[odds]
    got_task = {}

    def die_mid_round():
        for _ in range(100):
            try:
                w = dead.register(odds, counts)
                break
            except Exception:
                time.sleep(0.2)
        while "task" not in got_task:
            msg = dead.poll(w.session, wait_s=1.0)
            if isinstance(msg, M.Task):
                got_task["task"], got_task["welcome"] = msg, w

    th = threading.Thread(target=die_mid_round, daemon=True)
    th.start()
    caplog.set_level(logging.INFO, logger="server.grpc")
    ex = GrpcExecutor.from_config(cfg, local_sim.data, local_sim.trainer)
    # the normal start is INFO, not a WARNING (fedopt serve shows server.grpc's INFO lines)
    assert [r.levelno for r in caplog.records if "listening on" in r.message] == [logging.INFO]
    c = ex.coordinator
    assert (c.upload_grace_s, c.min_upload_rate) == (20.0, 32.0 * 1024)   # the config's keys
    try:
        ids = np.array([0, 1, 2, 3, 4, 6])
        w = np.array([1.0, 2.0, 3.0, 1.0, 2.0, 1.0])
        params = local_sim.state.params
        out = ex.run_jobs(SharedStart(params), ids, np.full(len(ids), 4), w)
        kept = ids % 2 == 0
        ref = local_sim.executor.run_jobs(SharedStart(params), ids[kept],
                                          np.full(kept.sum(), 4), w[kept])
        scale = w.sum() / w[kept].sum()
        for k in ref.delta_sum:
            torch.testing.assert_close(out.delta_sum[k], ref.delta_sum[k] * scale, rtol=0,
                                       atol=1e-12)
        assert out.updates == kept.sum() and out.weight_sum == w.sum()
        f = ex.faults()
        assert f["timeouts"] == 1 and f["dropped_clients"] == 2
        th.join(5)
        task, welcome = got_task["task"], got_task["welcome"]
        late = M.Result(session=welcome.session, epoch=welcome.epoch, task_id=task.task_id,
                        client_ids=task.client_ids, delta_sum={k: v.numpy() for k, v in
                                                               params.items()},
                        weight_sum=float(task.weights.sum()), samples=1, updates=2,
                        steps=np.ones(2, np.int64), nonfinite=np.zeros(0, np.int64))
        ack = dead.submit(late)
        assert not ack.ok and ack.reason.startswith("stale")
        assert ex.faults()["refused_results"] == 1
    finally:
        dead.close()
        ex.close()
        for _, t in threads:
            t.join(10)


def test_a_client_with_its_own_npz_file(local_sim, tmp_path):
    """``fedopt client --data part.npz --clients 12-23``: the file's clients 0..11 are global
    clients 12..23 (embed_clients); with the coordinator's data set saved as an npz file the
    fleet (one --config client, one --data client) equals the in-process executor."""
    d = local_sim.data
    counts = d.counts.cpu().numpy()
    owner = np.repeat(np.arange(d.num_clients), counts)
    test_owner = d.client_test.cpu().numpy()
    x, y = d.x.cpu().numpy(), d.y.cpu().numpy()
    xt, yt = d.x_test.cpu().numpy(), d.y_test.cpu().numpy()
    np.savez(tmp_path / "full.npz", x_train=x, y_train=y, client_train=owner, x_test=xt,
             y_test=yt, client_test=test_owner)
    part, tpart = owner >= 12, test_owner >= 12
    np.savez(tmp_path / "part.npz", x_train=x[part], y_train=y[part],
             client_train=owner[part] - 12, x_test=xt[tpart], y_test=yt[tpart],
             client_test=test_owner[tpart] - 12)
    tokens = write_tokens(tmp_path / "tokens.txt", 2)
    raw = grpc_config(tmp_path / "tokens.txt", free_port())
    raw["data"] = {"name": "npz", "path": str(tmp_path / "full.npz")}
    cfg = load_config(raw)
    sim = Simulation(load_config({**raw, "executor": {"name": "local", "dtype": "float64"}}))
    threads = _start_clients(cfg, tokens[:1], [range(12)])
    other = GrpcClient(Options(server=cfg["executor"]["address"], token=tokens[1],
                               data=str(tmp_path / "part.npz"), clients=np.arange(12, 24),
                               poll_s=1.0, max_wait_s=60))
    th = threading.Thread(target=other.serve, daemon=True)
    th.start()
    ex = GrpcExecutor.from_config(cfg, sim.data, sim.trainer)
    try:
        ids = np.array([3, 13, 20, 7])
        w = np.array([1.0, 2.0, 0.5, 1.0])
        ref = sim.executor.run_jobs(SharedStart(sim.state.params), ids, np.full(4, 1), w)
        got = ex.run_jobs(SharedStart(sim.state.params), ids, np.full(4, 1), w)
        assert_output_close(ref, got)
    finally:
        ex.close()
        th.join(10)
        for _, t in threads:
            t.join(10)
