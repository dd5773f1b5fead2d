"""The zeroth-order family on Ray workers equals the in-process run: the local programs (keyed
ZO estimators, the ranking oracle, LossOnly evaluations) travel as data, and the directions are
keyed by (seed, round, client, step), not by where a client runs."""
import pytest

import fedopt
from tests.server.ray_fixtures import (assert_metrics_close, assert_params_close,  # noqa: F401
                                       make_config, ray_session)

SMALL_FZOOS = {"name": "fzoos", "rounds": 2, "clients_per_round": 24, "iters": 2,
               "n_inits": 3, "nearest": 20, "candidates": 10, "rff_features": 200,
               "rff_nearest": 40, "rff_candidates": 20, "rff_active": 5}


@pytest.mark.parametrize("algorithm,client", [
    ({"name": "fedzo"}, {"estimator": {"name": "gaussian", "directions": 4, "mu": 1e-3}}),
    ({"name": "fedzo"}, {"estimator": {"name": "sphere", "directions": 3, "scheme": "central"}}),
    ({"name": "zo_ranksgd", "m": 4, "k": 2}, {}),
    ({"name": "fedcbo", "particles": 6}, {"local_steps": 1}),
    ({"name": "fedcbo_clustered", "peers": 3}, {}),
    (SMALL_FZOOS, {"local_steps": 1, "optimizer": {"name": "adam", "lr": 0.01}}),
])
def test_zeroth_order_runs_equal_local_on_ray(ray_session, algorithm, client):
    runs = []
    for executor in ("local", "ray"):
        cfg = make_config(executor, algorithm=algorithm)
        cfg["client"].update(client)
        runs.append(fedopt.run(cfg, progress=False))
    local, ray_run = runs
    assert [r["queries"] for r in local.metrics] == [r["queries"] for r in ray_run.metrics]
    assert_metrics_close(local.metrics, ray_run.metrics)
    assert_params_close(local.final_params, ray_run.final_params)
