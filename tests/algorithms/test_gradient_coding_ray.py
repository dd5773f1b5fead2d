"""Gradient coding on Ray workers (``algorithm.live``): one coded-task call per worker actor
returns its coded workers' f_i one by one, the master takes the first responders (``ray.wait``);
with the virtual clock's times injected as real delays the run equals the in-process
virtual-clock run (same decode sets and virtual times, parameters to float summation order).
Sequential codes and minibatches on Ray: tests/server/test_ray_sgc.py."""
import copy

import numpy as np
import pytest
import torch

from fedopt.config import ConfigError, load_config
from fedopt.simulation import Simulation
from tests.server.ray_fixtures import TEST_CPUS_PER_WORKER, ray_session  # noqa: F401

# distinct, well separated worker times (speed list) with a small per-round jitter
CLOCK = {"compute": {"name": "exponential", "shift": 1.0, "scale": 0.02},
         "speed": {"name": "list", "values": [1.0, 3.0, 1.5, 4.0, 2.0, 2.5]}}


def config(code, s, executor, live, spu=None, rounds=3):
    cfg = {"seed": 5, "data": {"name": "synthetic", "alpha": 1.0, "beta": 1.0,
                               "num_clients": 12, "max_samples": 60},
           "model": {"name": "logreg"},
           "algorithm": {"name": "gradient_coding", "code": code, "num_workers": 6,
                         "stragglers": s, "rounds": rounds, "live": live,
                         "seconds_per_unit": spu, "decode_error": True},
           "client": {"local_steps": 1,        # full-batch partitions: no batch_size
                      "optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.5}},
           "clock": CLOCK, "executor": {"name": executor, "dtype": "float64"}}
    if executor == "ray":
        cfg["executor"].update({"num_workers": 2, "num_threads": 1,
                                "num_cpus_per_worker": TEST_CPUS_PER_WORKER})
    return cfg


@pytest.mark.parametrize("code,s", [("cyclic", 2), ("frc", 2)])
def test_ray_first_responders_equal_the_virtual_clock(ray_session, code, s):
    ref = Simulation(load_config(config(code, s, "local", False)))
    ray_sim = Simulation(load_config(config(code, s, "ray", True, spu=0.05)))
    try:
        for _ in range(3):
            a, b = ref.step(), ray_sim.step()
            assert b["waited_for"] == a["waited_for"] and b["decoded"] == a["decoded"]
            assert b["virtual_time"] == pytest.approx(a["virtual_time"], rel=1e-12)
            assert b["decode_error"] < 1e-12 and b["realtime_s"] > 0
            for k in ref.state.params:
                torch.testing.assert_close(ray_sim.state.params[k], ref.state.params[k],
                                           rtol=0, atol=1e-10)
    finally:
        ref.close()
        ray_sim.close()


def test_live_needs_a_live_executor():
    with pytest.raises(ConfigError, match="^algorithm.live"):
        load_config(config("cyclic", 2, "local", True))
    with pytest.raises(ConfigError, match="^algorithm.seconds_per_unit"):
        load_config(config("cyclic", 2, "local", False, spu=0.1))
    with pytest.raises(ConfigError, match="^algorithm.seconds_per_unit"):
        cfg = config("cyclic", 2, "local", False, spu=0.1)
        cfg["algorithm"].update({"code": "sr_sgc", "stragglers": 0})
        load_config(cfg)
    assert not load_config(config("cyclic", 2, "ray", True))["algorithm"]["minibatch"]
