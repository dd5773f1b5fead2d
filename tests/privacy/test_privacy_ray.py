"""Privacy on Ray workers equals the in-process run: the clipping/noise postprocessors and
DIFF2's message travel inside the local program, and every noise draw is keyed by (seed, round,
client), not by where a client runs."""
import copy

import pytest

import fedopt
from tests.server.ray_fixtures import (TEST_CPUS_PER_WORKER, assert_metrics_close,  # noqa: F401
                                       assert_params_close, ray_session)

BASE = {
    "seed": 7,
    "data": {"name": "synthetic", "alpha": 1.0, "beta": 1.0, "num_clients": 8},
    "model": {"name": "logreg"},
    "executor": {"name": "local", "dtype": "float64", "chunk_size": 3},
}
DP_FEDAVG = {"algorithm": {"name": "fedavg", "rounds": 3, "clients_per_round": 4,
                           "aggregation_weights": "uniform"},
             "client": {"local_steps": 3, "batch_size": 10,
                        "optimizer": {"name": "sgd", "lr": 0.05}}}
DIFF2 = {"algorithm": {"name": "diff2", "rounds": 4, "clients_per_round": 8,
                       "restart_period": 2, "server_optimizer": {"lr": 0.5}},
         "client": {"local_steps": 1, "batch_size": 100000},
         "privacy": {"mechanism": "diff2", "epsilon": 4.0, "clip": 1.0, "clip_diff": 0.2}}


def with_privacy(privacy):
    return {**DP_FEDAVG, "privacy": {"mechanism": "dp_fedavg", "epsilon": 4.0, **privacy}}


@pytest.mark.slow
@pytest.mark.parametrize("setting", [
    with_privacy({"clip": 0.5, "noise": "central"}),
    with_privacy({"clip": 0.5, "noise": "local", "clip_per_layer": True}),
    DIFF2,
], ids=["dp_fedavg-central", "dp_fedavg-local-per-layer", "diff2"])
def test_private_runs_equal_local_on_ray(ray_session, setting):
    runs = []
    for executor in ("local", "ray"):
        cfg = copy.deepcopy({**BASE, **setting})
        if executor == "ray":
            cfg["executor"].update({"name": "ray", "num_workers": 2, "num_threads": 1,
                                    "num_cpus_per_worker": TEST_CPUS_PER_WORKER})
        runs.append(fedopt.run(cfg, progress=False))
    local, ray_run = runs
    assert all(r["epsilon_spent"] > 0 for r in local.metrics)
    assert_metrics_close(local.metrics, ray_run.metrics)
    assert_params_close(local.final_params, ray_run.final_params)
