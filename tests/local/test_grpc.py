"""Adaptive local training on gRPC client processes (threads of the test, real loopback gRPC)
gives the in-process round output: the client builds the same local program as the
coordinator, including client.batch_size_test / sso / curriculum, and the largest batches
travel back (the rows' batch_size_max)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from fedopt.client.grpc_client import GrpcClient, Options
from fedopt.config import load_config
from fedopt.engine.contract import SharedStart
from fedopt.server.grpc_executor import GrpcExecutor
from fedopt.simulation import Simulation
from tests.server.grpc_fixtures import free_port, grpc_config, write_tokens
from tests.server.ray_fixtures import assert_output_close, make_config

pytestmark = pytest.mark.slow

TRAINING = {"batch_size": 3, "optimizer": {"name": "adam", "lr": 0.02},
            "batch_size_test": {"name": "inner_product", "eta": 0.3, "max_batch_size": 20},
            "lr_batch_scaling": "sqrt", "sso": {"inner_steps": 2, "eta": 2.0},
            "curriculum": {"order": "curriculum", "min_prefix": 4}}


def test_grpc_clients_run_the_adaptive_program_like_the_in_process_executor(tmp_path):
    local = make_config("local")
    local["client"].update(TRAINING)
    sim = Simulation(load_config(local))
    tokens = write_tokens(tmp_path / "tokens.txt", 1)
    cfg = grpc_config(tmp_path / "tokens.txt", free_port(), join_timeout_s=20.0,
                      min_clients=1)
    cfg["client"].update(TRAINING)
    cfg = load_config(cfg)
    client = GrpcClient(Options(server=cfg["executor"]["address"], token=tokens[0], config=cfg,
                                clients=np.arange(24), poll_s=1.0, max_wait_s=30))
    errors = []

    def serve():
        try:
            client.serve()
        except BaseException as e:          # ClientExit: the refusal this test guards against
            errors.append(e)

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    ex = GrpcExecutor.from_config(cfg, sim.data, sim.trainer)
    try:
        ids = sim.algorithm.sample_clients(1)
        weights = sim.algorithm.weights(ids)
        ref = sim.executor.run_jobs(SharedStart(sim.state.params), ids, np.full(len(ids), 1),
                                    weights)
        got = ex.run_jobs(SharedStart(sim.state.params), ids, np.full(len(ids), 1), weights)
    finally:
        ex.close()
        th.join(10)
    assert not errors, errors
    assert_output_close(ref, got)                 # the same steps and updates
    assert ref.batch_size.max() > 3
    assert got.batch_size is not None and np.array_equal(ref.batch_size, got.batch_size)
