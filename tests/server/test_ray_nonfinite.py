"""Non-finite clients on the Ray executor: checked on the workers, ids sent back, the run's
``on_nonfinite`` applied by the coordinator — the same outcome as in-process."""
import pytest
import torch

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
