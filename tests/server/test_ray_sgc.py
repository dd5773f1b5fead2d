"""Sequential gradient coding (SR-SGC, M-SGC) and minibatch gradient coding on Ray workers
(``algorithm.live``): one coded-task call per worker actor and round, the master decides the
stragglers from the answers' real arrival times; with the virtual clock's times injected as real
delays (``seconds_per_unit``) the run equals the in-process virtual-clock run — the same
stragglers, waits, decode rounds and virtual times, parameters to float64 round-off."""
import numpy as np
import pytest
import torch

from fedopt.config import load_config
from fedopt.simulation import Simulation
from tests.server.ray_fixtures import TEST_CPUS_PER_WORKER, ray_session  # noqa: F401

pytestmark = pytest.mark.slow

#: bursty stragglers: a worker is 10x slower in the chain's bad state (well separated times)
MARKOV = {"compute": {"name": "markov", "p_good_to_bad": 0.25, "p_bad_to_good": 0.5}}
SPEEDS = {"compute": {"name": "exponential", "shift": 1.0, "scale": 0.02},
          "speed": {"name": "list", "values": [1.0, 3.0, 1.5, 4.0, 2.0, 2.5]}}


def config(algorithm, clock, executor, spu=None, batch_size=None):
    cfg = {"seed": 3, "data": {"name": "synthetic", "alpha": 1.0, "beta": 1.0,
                               "num_clients": 40, "max_samples": 60},
           "model": {"name": "logreg"},
           "algorithm": {"name": "gradient_coding", "num_workers": 6, **algorithm,
                         "live": executor == "ray", "seconds_per_unit": spu},
           "client": {"local_steps": 1,
                      "optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.5}},
           "clock": clock, "executor": {"name": executor, "device": "cpu", "dtype": "float64"},
           "eval_every": 1000}
    if batch_size is not None:
        cfg["client"]["batch_size"] = batch_size
    if executor == "ray":
        cfg["executor"].update({"num_workers": 2, "num_threads": 1,
                                "num_cpus_per_worker": TEST_CPUS_PER_WORKER})
    return cfg


def assert_same_run(ref, live, steps, keys, replicas=False):
    try:
        for _ in range(steps):
            a, b = ref.step(), live.step()
            for k in keys:
                assert b[k] == a[k], k
            assert b["virtual_time"] == pytest.approx(a["virtual_time"], rel=1e-12)
            for k in ref.state.params:
                torch.testing.assert_close(live.state.params[k], ref.state.params[k],
                                           rtol=0, atol=1e-10)
        if replicas:
            for x, y in zip(ref.state.extra["sgc"]["replicas"],
                            live.state.extra["sgc"]["replicas"]):
                for k in x:
                    torch.testing.assert_close(y[k], x[k], rtol=0, atol=1e-10)
        return a
    finally:
        ref.close()
        live.close()


@pytest.mark.parametrize("code,B,W,lam", [("sr_sgc", 1, 2, 2), ("m_sgc", 1, 3, 2)])
def test_sequential_codes_on_ray_equal_the_virtual_clock(ray_session, code, B, W, lam):
    alg = {"code": code, "burst": B, "window": W, "lam": lam, "rounds": 6}
    ref = Simulation(load_config(config(alg, MARKOV, "local")))
    live = Simulation(load_config(config(alg, MARKOV, "ray", spu=0.05)))
    last = assert_same_run(ref, live, 6, ["decoded", "stragglers", "waited", "worker_load"],
                           replicas=True)
    assert last["decoded"] == 6
    assert last["stragglers"] > 0          # results were erased and the code absorbed them


def test_minibatch_gradient_coding_on_ray_equals_the_virtual_clock(ray_session):
    """client.batch_size given: minibatch gradients keyed by (seed, t, client), the same rows
    on whichever actor computes them; decode sets equal under injected delays."""
    alg = {"code": "cyclic", "stragglers": 2, "rounds": 4, "decode_error": True}
    ref = Simulation(load_config(config(alg, SPEEDS, "local", batch_size=4)))
    live = Simulation(load_config(config(alg, SPEEDS, "ray", spu=0.05, batch_size=4)))
    assert ref.algorithm.minibatch and live.algorithm.minibatch
    last = assert_same_run(ref, live, 3, ["decoded", "waited_for"])
    assert last["waited_for"] == 4         # n − s first responders decoded exactly


def test_a_dead_worker_actor_is_a_straggler_the_code_absorbs(ray_session):
    """Killing the actor that hosts coded workers mid-run: its workers are lost for that
    iteration (counted in the fault log), the run goes on where the code still decodes."""
    alg = {"code": "frc", "stragglers": 2, "rounds": 3}
    # injected delays: the survivors answer after the dead actor's error has come back
    live = Simulation(load_config(config(alg, SPEEDS, "ray", spu=0.05)))
    try:
        live.step()
        ex = live.executor
        ray_session.kill(ex.pool.actor(1))
        row = live.step()                  # FRC (s = 2): groups {0,1,2}, {3,4,5} need one each
        assert row["decoded"] == 2
        assert ex.faults()["worker_deaths"] >= 1
        assert np.isfinite([float(v.sum()) for v in live.state.params.values()]).all()
    finally:
        live.close()
