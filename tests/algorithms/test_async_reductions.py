"""The asynchronous family on the real vectorized engine reduces exactly to FedAvg where the
theory says it must (federated.md §5 oracles 9, 10, 11), and its lazy, version-batched
computation equals a one-job-at-a-time reference of the general update (§2.1)."""
import numpy as np
import pytest
import torch

from fedopt.config import load_config
from fedopt.simulation import Simulation

N = 6


def simulation(algorithm, clock=None, n=N, model="mlp", lr_decay=1.0, steps=3):
    cfg = {"seed": 3, "data": {"name": "synthetic", "num_clients": n, "min_samples": 8,
                               "max_samples": 40, "num_features": 10, "num_classes": 4},
           "model": {"name": model, **({"hidden": [8]} if model == "mlp" else {})},
           "algorithm": algorithm,
           "client": {"local_steps": steps, "batch_size": 5, "lr_decay": lr_decay,
                      "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.5}},
           "executor": {"dtype": "float64"}, "eval_train": False}
    if clock is not None:
        cfg["clock"] = clock
    return Simulation(load_config(cfg))


def trajectory(sim, rounds):
    out = []
    for _ in range(rounds):
        sim.step()
        out.append({k: v.clone() for k, v in sim.state.params.items()})
    return out


def assert_same(a, b):
    assert len(a) == len(b)
    for pa, pb in zip(a, b):
        for k in pa:
            assert torch.equal(pa[k], pb[k]), k


EXPONENTIAL = {"compute": {"name": "exponential", "shift": 0.1, "scale": 1.0},
               "speed": {"name": "lognormal", "sigma": 1.0}}


def test_fedbuff_with_buffer_n_is_fedavg_for_any_compute_times():       # oracle 9
    fedavg = simulation({"name": "fedavg", "rounds": 5, "clients_per_round": N,
                         "aggregation_weights": "uniform"})
    fedbuff = simulation({"name": "fedbuff", "rounds": 5, "clients_per_round": N,
                          "buffer_size": N}, clock=EXPONENTIAL)
    assert_same(trajectory(fedbuff, 5), trajectory(fedavg, 5))
    assert fedbuff.client_updates == fedavg.client_updates == 5 * N
    assert fedbuff.samples == fedavg.samples


def test_fedfix_with_interval_above_every_time_is_fedavg():             # oracle 10
    fedavg = simulation({"name": "fedavg", "rounds": 4, "clients_per_round": N})
    fedfix = simulation({"name": "fedfix", "rounds": 4, "clients_per_round": N, "interval": 1.5},
                        clock={"speed": {"name": "linear", "spread": 80}})
    assert_same(trajectory(fedfix, 4), trajectory(fedavg, 4))


def test_async_with_one_client_is_fedavg_with_one_client():             # oracle 11
    fedavg = simulation({"name": "fedavg", "rounds": 4, "clients_per_round": 1}, n=1)
    fedasync = simulation({"name": "async_fedavg", "rounds": 4, "clients_per_round": 1}, n=1,
                          clock=EXPONENTIAL)
    assert_same(trajectory(fedasync, 4), trajectory(fedavg, 4))


def test_sync_with_sampling_and_lr_decay_is_fedavg():
    fedavg = simulation({"name": "fedavg", "rounds": 4, "clients_per_round": 3,
                         "server_optimizer": {"name": "adam", "lr": 0.05}}, lr_decay=0.8)
    sync = simulation({"name": "fedavg_sync", "rounds": 4, "clients_per_round": 3,
                       "server_optimizer": {"name": "adam", "lr": 0.05}}, lr_decay=0.8,
                      clock=EXPONENTIAL)
    assert_same(trajectory(sync, 4), trajectory(fedavg, 4))


def reference_general(sim, rounds, mixing_alpha=None):
    """θ^{n+1} = θ^n + Σ_i ω_i (y_i − θ^{ρ_i})  (or + Σ α ω_i (y_i − θ^n) for mixing), every
    job trained alone from its stored start model with its own key ρ, on the schedule of the
    same clock; weights from the algorithm's rule (checked separately)."""
    alg, ex = sim.algorithm, sim.executor
    state = alg.init(sim.state.params)
    st = state.extra["async"]["sched"]
    models = {0: {k: v.clone() for k, v in state.params.items()}}
    theta = models[0]
    out = []
    for n in range(rounds):
        step = alg.scheduler.advance(st)
        models.setdefault(n, theta)
        w = alg.weights(step, st)
        new = {k: v.clone() for k, v in theta.items()}
        for wi, i, rho in zip(w, step.clients, step.versions):
            y = ex.run_round(models[int(rho)], np.array([i]), np.ones(1), int(rho),
                             optimizer=sim.client_optimizer, keep_local=True).local_params
            base = theta if mixing_alpha else models[int(rho)]
            for k in new:
                new[k] = new[k] + float(wi) * (y[k][0] - base[k])
        theta = new
        models[n + 1] = theta
        out.append(theta)
    return out


@pytest.mark.parametrize("algorithm", [
    {"name": "fedfix", "interval": 0.3},
    {"name": "async_fedavg"},
    {"name": "fedbuff", "buffer_size": 2, "clients_per_round": 4},
    {"name": "fedasync", "mixing_alpha": 0.5},
])
def test_lazy_batched_computation_equals_one_job_at_a_time(algorithm):
    alg = {"rounds": 12, "clients_per_round": N, **algorithm}
    clock = {"compute": {"name": "exponential", "shift": 0.05, "scale": 0.5},
             "speed": {"name": "linear", "spread": 80}}
    sim = simulation(alg, clock=clock)
    ref = reference_general(simulation(alg, clock=clock), 12,
                            mixing_alpha=alg.get("mixing_alpha"))
    got = trajectory(sim, 12)
    for a, b in zip(got, ref):
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-12, atol=1e-12)
    calls = sim.state.extra["async"]
    assert set(calls["versions"]) <= set(range(13))   # only versions still needed are kept
