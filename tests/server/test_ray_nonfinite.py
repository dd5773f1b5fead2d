"""Non-finite clients on the Ray executor: checked on the workers, ids sent back, the run's
``on_nonfinite`` applied by the coordinator — the same outcome as in-process, and in real time
(``executor.realtime``) the same steps as the virtual-clock run."""
import pytest
import torch

from fedopt.config import load_config
from fedopt.engine.nonfinite import NonFiniteError
from fedopt.simulation import Simulation
from tests.server.ray_fixtures import TEST_CPUS_PER_WORKER, ray_session  # noqa: F401
from tests.test_nonfinite import COUNTS, POISON, assert_params_close, config, hand_fedavg, write_data

RAY = {"name": "ray", "num_workers": 2, "num_threads": 1,
       "num_cpus_per_worker": TEST_CPUS_PER_WORKER}


def test_ray_names_the_poisoned_client_and_drops_it_like_in_process(ray_session, tmp_path):
    path = write_data(tmp_path / "poisoned.npz")
    sim = Simulation(config(path, "fedavg", "error", executor=RAY))
    try:
        with pytest.raises(NonFiniteError, match=rf"^round 1: client {POISON} produced NaN/inf"):
            sim.step()
        assert sim.state.round == 0
    finally:
        sim.close()
    sim = Simulation(config(path, "fedavg", "drop", executor=RAY))
    try:
        want = hand_fedavg(sim)
        stats = sim.step()
        assert stats["nonfinite_dropped"] == 1 and sim.client_updates == len(COUNTS) - 1
        assert_params_close(sim.state.params, want)
        local = Simulation(config(path, "fedavg", "drop"))
        local.step()
        for k, v in local.state.params.items():
            assert torch.allclose(sim.state.params[k], v, rtol=1e-6, atol=1e-7), k
    finally:
        sim.close()


# -- real time (executor.realtime) applies the policy as the virtual-clock async family does ----

#: injected job times (clock units): the poisoned client 2 arrives at t = 1 alone (async FedAvg:
#: a step that keeps nothing) or with client 0 (FedBuff-2: a step renormalised over client 0)
REALTIME_CASES = [
    ({"name": "async_fedavg"}, [0.7, 1.3, 1.0, 1.6, 2.2]),
    ({"name": "fedbuff", "buffer_size": 2, "staleness": "constant"}, [1.0, 1.3, 1.0, 1.6, 2.2]),
]
SPU = 0.02      # seconds per clock unit


def realtime_config(path, algorithm, times, policy, ray=False):
    """tests.test_nonfinite's run (float32: the poison overflows) with deterministic job times;
    optionally real time on Ray."""
    executor = {**RAY, "realtime": True, "seconds_per_unit": SPU} if ray else None
    cfg = config(path, algorithm["name"], policy, rounds=6,
                 extra={k: v for k, v in algorithm.items() if k != "name"}, executor=executor)
    cfg["clock"] = {"speed": {"name": "list", "values": times}}
    return load_config(cfg)


def test_realtime_drop_equals_the_virtual_run_and_error_names_the_client(ray_session, tmp_path):
    """Injected delays make the real-time run the virtual one: under ``drop`` every step's
    model, kept-update count and ``nonfinite_dropped`` equal the virtual-clock run's (which
    drops the poisoned client's arrivals); under ``error`` the first step that handles its
    update raises naming it, and no model was installed from it."""
    path = write_data(tmp_path / "poisoned.npz")
    for algorithm, times in REALTIME_CASES:
        virtual = Simulation(realtime_config(path, algorithm, times, "drop"))
        real = Simulation(realtime_config(path, algorithm, times, "drop", ray=True))
        try:
            saw_all_dropped = False
            for _ in range(6):
                vs, rs = virtual.step(), real.step()
                for key in ("virtual_time", "nonfinite_dropped", "staleness_max", "dropped"):
                    assert rs[key] == vs[key], (algorithm["name"], virtual.state.round, key)
                assert ("local_loss" in rs) == ("local_loss" in vs)
                saw_all_dropped |= "local_loss" not in vs
                for k, v in virtual.state.params.items():
                    assert torch.isfinite(real.state.params[k]).all()
                    # float32; the same jobs, batched differently (in-process: stacked)
                    torch.testing.assert_close(real.state.params[k], v, rtol=1e-5, atol=1e-6)
            assert real.client_updates == virtual.client_updates
            assert rs["nonfinite_dropped"] >= 2          # the poisoned client arrived twice
            assert saw_all_dropped == (algorithm["name"] == "async_fedavg")
            # the count is in the checkpointed state: a resume continues it
            assert real.state.extra["realtime"]["totals"]["nonfinite_dropped"] == \
                rs["nonfinite_dropped"]
        finally:
            real.close()
    sim = Simulation(realtime_config(path, *REALTIME_CASES[1], "error", ray=True))
    start = {k: v.clone() for k, v in sim.state.params.items()}
    try:
        with pytest.raises(NonFiniteError, match=rf"^round 1: client {POISON} produced NaN/inf"):
            sim.step()       # step 0 aggregates clients 0 and 2
        for k, v in start.items():
            assert torch.equal(sim.state.params[k], v)
    finally:
        sim.close()
