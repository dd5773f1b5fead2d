"""The client-level curriculum: scores are the clients' mean losses by direct computation, each
round's sample lies in the paced prefix of the ranking, b = 1 opens the pool to everyone,
refused for algorithms without per-round sampling, and a resumed run samples the same clients."""
import numpy as np
import pytest
import torch

from fedopt.config import load_config, validate
from fedopt.local.client_order import client_losses
from fedopt.local.curriculum import pacing
from fedopt.schema import ConfigError
from fedopt.simulation import Simulation

CFG = {"seed": 1, "data": {"name": "synthetic", "num_clients": 12, "min_samples": 10,
                           "max_samples": 40},
       "model": {"name": "logreg"},
       "algorithm": {"name": "fedavg", "rounds": 6, "clients_per_round": 3},
       "client": {"local_steps": 2, "batch_size": 5, "optimizer": {"name": "sgd", "lr": 0.1},
                  "client_curriculum": {"order": "curriculum", "a": 0.5, "b": 0.25}}}


def test_scores_are_each_clients_mean_loss():
    sim = Simulation(load_config(CFG))
    off = sim.data.offsets.cpu().numpy()
    got = client_losses(sim.fmodel, sim.program.loss_fn, sim.state.params, sim.data.x,
                        sim.data.y, off)
    for i in range(12):
        rows = slice(int(off[i]), int(off[i + 1]))
        out = sim.fmodel.forward(sim.state.params, sim.data.x[rows])
        want = torch.nn.functional.cross_entropy(out, sim.data.y[rows]).item()
        assert got[i] == pytest.approx(want, rel=1e-5)


def test_samples_lie_in_the_paced_prefix_of_the_ranking():
    sim = Simulation(load_config(CFG))
    seen = []
    for t in range(6):
        off = sim.data.offsets.cpu().numpy()
        s = client_losses(sim.fmodel, sim.program.loss_fn, sim.state.params, sim.data.x,
                          sim.data.y, off)
        size = max(pacing("linear", 3 * t, 18, 12, 0.5, 0.25), 3)
        allowed = set(np.argsort(s, kind="stable")[:size].tolist())
        pool = sim.algorithm.pool(sim.state.params, t)
        assert set(pool.tolist()) == allowed
        captured = {}
        real = sim.algorithm.inner.run_round

        def spy(state, executor, opt=None):
            captured["ids"] = sim.algorithm.inner.sample_clients(state.round)
            return real(state, executor, opt)

        sim.algorithm.inner.run_round = spy
        stats = sim.step()
        del sim.algorithm.inner.run_round
        assert set(captured["ids"].tolist()) <= allowed and stats["client_pool"] == size
        seen.append(size)
    assert seen[0] == 3 and seen[-1] == 12


def test_b1_opens_the_pool_and_other_algorithms_are_refused():
    cfg = {**CFG, "client": {**CFG["client"], "client_curriculum": {"b": 1.0}}}
    sim = Simulation(load_config(cfg))
    assert len(sim.algorithm.pool(sim.state.params, 0)) == 12
    bad = {**CFG, "algorithm": {"name": "async_fedavg", "rounds": 2, "clients_per_round": 3}}
    with pytest.raises(ConfigError, match="^client.client_curriculum"):
        validate(bad)


def test_resume_samples_the_same_clients():
    full = Simulation(load_config(CFG))
    full.run()
    half = Simulation(load_config(CFG))     # the same run, interrupted after 3 rounds
    for _ in range(3):
        half.step()
    again = Simulation(load_config(CFG))
    again.restore(half.checkpoint())
    again.run()
    for k, v in full.state.params.items():
        assert torch.equal(v, again.state.params[k])


def test_refused_with_dp_privacy_at_validate_and_run():
    """DP-FedAvg's accounting needs uniform client sampling: the pool is refused, naming the
    field, by validate as by a run (validate used to pass it and the run fail)."""
    dp = {**CFG, "algorithm": {**CFG["algorithm"], "aggregation_weights": "uniform"},
          "privacy": {"mechanism": "dp_fedavg", "clip": 0.5, "noise_multiplier": 1.0}}
    with pytest.raises(ConfigError, match="^client.client_curriculum: not available with privacy"):
        validate(dp)
    with pytest.raises(ConfigError, match="^client.client_curriculum: not available with privacy"):
        Simulation(load_config(dp))
