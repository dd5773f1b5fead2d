"""Asynchronous algorithms in real time on gRPC client processes (the transport-independent
driver server/realtime.py over GrpcExecutor.submit / wait / cancel).

Oracle (as for Ray): with the clock's job times injected as delays, the real-time run gives
the models, staleness, update and drop counts of the virtual-clock run on the in-process
executor, step by step. Client processes are threads of the test (the ``fedopt client`` loop).
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

from fedopt.client.grpc_client import GrpcClient, Options
from fedopt.config import load_config
from fedopt.server.grpc_executor import GrpcExecutor
from fedopt.simulation import Simulation
from tests.server.grpc_fixtures import free_port, write_tokens
from tests.server.test_ray_realtime import (assert_same_run, config, realtime_run, speeds,
                                            virtual_run)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def grpc_ex(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grpc_rt")
    tokens = write_tokens(folder / "tokens.txt", 2)
    base = Simulation(config({"name": "async_fedavg"}))
    raw = dict(base.config)
    raw["executor"] = {"name": "grpc", "dtype": "float64", "address": f"127.0.0.1:{free_port()}",
                       "min_clients": 2, "tokens": str(folder / "tokens.txt"),
                       "heartbeat_s": 1.0, "shutdown_grace_s": 5.0, "realtime": True,
                       "seconds_per_unit": 0.05}
    cfg = load_config(raw)
    threads = []
    for token, ids in zip(tokens, ([0, 2], [1, 3])):
        client = GrpcClient(Options(server=cfg["executor"]["address"], token=token, config=cfg,
                                    clients=np.asarray(ids), poll_s=1.0, max_wait_s=60))
        th = threading.Thread(target=client.serve, daemon=True)
        th.start()
        threads.append(th)
    ex = GrpcExecutor.from_config(cfg, base.data, base.trainer)
    ids = np.arange(4)
    ex.wait(ex.submit(base.state.params, ids, 0), num_returns=4)     # warm up both clients
    yield ex
    ex.close()
    for th in threads:
        th.join(10)


@pytest.mark.parametrize("algorithm,clock,steps,spu", [
    ({"name": "fedbuff", "buffer_size": 2,
      "server_optimizer": {"name": "sgd", "lr": 1.0, "momentum": 0.9}},
     speeds(0.6, 1.5, 1.8, 2.4), 4, 0.05),
    # synchronous rounds that drop the slowest client (its job is cancelled, its answer refused)
    ({"name": "fedavg_sync", "drop_slowest": 1}, speeds(1.0, 1.5, 2.0, 20.0), 2, 0.05),
], ids=["fedbuff", "fedavg_sync"])
def test_realtime_run_equals_the_virtual_clock_run(grpc_ex, algorithm, clock, steps, spu):
    virtual = virtual_run(algorithm, clock, steps)
    real = realtime_run(grpc_ex, algorithm, clock, steps, spu)
    assert_same_run(virtual, real, spu, lag_s=2.0)


def test_a_realtime_grpc_config_builds_the_driver():
    from fedopt.executors import realtime_driver
    from fedopt.server.realtime import RealTimeAsync

    assert realtime_driver("grpc").__self__ is RealTimeAsync
