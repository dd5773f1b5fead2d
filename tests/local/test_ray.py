"""Adaptive local training on Ray workers gives the in-process trajectory and batch sizes."""
import pytest

import fedopt
from tests.server.ray_fixtures import (assert_metrics_close, assert_params_close,  # noqa: F401
                                       make_config, ray_session)

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def with_local_training(cfg):
    cfg["client"].update({"batch_size": 3, "optimizer": {"name": "adam", "lr": 0.02},
                          "batch_size_test": {"name": "inner_product", "eta": 0.3,
                                              "max_batch_size": 20},
                          "lr_batch_scaling": "sqrt", "sso": {"inner_steps": 2, "eta": 2.0},
                          "curriculum": {"order": "curriculum", "min_prefix": 4}})
    cfg["algorithm"]["rounds"] = 2
    return cfg


def test_ray_run_equals_the_in_process_run(ray_session):
    local = fedopt.run(with_local_training(make_config("local")), progress=False)
    ray_run = fedopt.run(with_local_training(make_config("ray", num_workers=2)), progress=False)
    assert_metrics_close(local.metrics, ray_run.metrics)
    assert_params_close(local.final_params, ray_run.final_params)
    assert [r["batch_size_max"] for r in local.metrics] == \
        [r["batch_size_max"] for r in ray_run.metrics]
    assert local.metrics[-1]["batch_size_max"] > 3
