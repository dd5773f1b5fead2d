"""Models and data are checked once, in Simulation._build, before any executor is built; sizes a
user's input implies are bounded there (issue 11, items 5-7)."""
import numpy as np
import pytest
import torch
from torch import nn

import fedopt
import fedopt.simulation as simulation
from fedopt.config import ConfigError, load_config
from fedopt.data import build_from_arrays
from fedopt.simulation import Simulation


def _config(executor="local", **client):
    return load_config({
        "seed": 1,
        "data": {"name": "synthetic", "num_clients": 12, "min_samples": 8, "max_samples": 40},
        "model": {"name": "logreg"},
        "algorithm": {"name": "fedavg", "rounds": 3, "clients_per_round": 4},
        "client": {"local_steps": 3, "batch_size": 10, "optimizer": {"name": "sgd", "lr": 0.1},
                   **client},
        "executor": {"name": executor},
    })


class BatchNormModel(nn.Module):
    def __init__(self, d=60, c=10):
        super().__init__()
        self.fc, self.bn = nn.Linear(d, c), nn.BatchNorm1d(c)

    def forward(self, x):
        return self.bn(self.fc(x))


class CountsTrainingSteps(nn.Module):
    """Writes a buffer only when gradients are on: a plain no-grad forward does not show it."""

    def __init__(self, d=60, c=10):
        super().__init__()
        self.fc = nn.Linear(d, c)
        self.register_buffer("steps", torch.zeros(()))

    def forward(self, x):
        if torch.is_grad_enabled():
            self.steps += 1
        return self.fc(x)


class IntegerParameter(nn.Module):
    def __init__(self, d=60, c=10):
        super().__init__()
        self.fc = nn.Linear(d, c)
        self.shift = nn.Parameter(torch.zeros(c, dtype=torch.int64), requires_grad=False)

    def forward(self, x):
        return self.fc(x) + self.shift


class WrongBatchedForward(nn.Module):
    def __init__(self, d=60, c=10):
        super().__init__()
        self.fc = nn.Linear(d, c)

    def forward(self, x):
        return self.fc(x)

    def batched_forward(self, params, x):   # forgets the bias
        return torch.bmm(x, params["fc.weight"].transpose(1, 2))


@pytest.mark.parametrize("executor", ["local", "ray"])
@pytest.mark.parametrize("model,match", [
    (BatchNormModel(), r"model: layer bn \(BatchNorm1d\) keeps running statistics"),
    (CountsTrainingSteps(), r"model is not compatible with torch.func vmap.*mutate"),
    (IntegerParameter(), r"model: parameter 'shift' has dtype torch.int64"),
    (nn.Linear(60, 3), r"gave output \(16, 3\), expected \(16, 10\) logits"),
    (WrongBatchedForward(), r"batched_forward\(params, x\) does not match"),
])
def test_user_model_is_refused_before_any_executor_is_built(monkeypatch, executor, model, match):
    def no_executor(*args, **kwargs):
        raise AssertionError("an executor was built for a model that must be refused")

    monkeypatch.setattr(simulation, "build_executor", no_executor)
    with pytest.raises(ConfigError, match=match):
        fedopt.run(_config(executor), model=model, progress=False)


def test_accepted_user_model_runs_on_the_in_process_executor():
    model = nn.Sequential(nn.Linear(60, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 10))
    res = fedopt.run(_config(), model=model, progress=False)
    assert res.summary["rounds"] == 3


def test_dataset_must_be_a_federated_dataset():
    x, y = np.zeros((20, 60), np.float32), np.arange(20) % 10
    with pytest.raises(ConfigError, match="dataset must be a fedopt.data.FederatedDataset"):
        fedopt.run(_config(), dataset=(x, y), progress=False)


def test_builtin_model_too_large_for_memory_is_refused_before_allocating():
    # logistic regression on 60 features: (60 + 1) * C parameters, by hand 6.1e12 for C = 1e11
    data = build_from_arrays(np.zeros((20, 60), np.float32), np.arange(20) % 10, 4, "iid",
                             seed=0, num_classes=10**11)
    with pytest.raises(ConfigError, match=r"model.name: logreg for input shape \[60\] and "
                                          r"100000000000 classes \(data.num_classes\) has "
                                          r"6,100,000,000,000 parameters"):
        fedopt.run(_config(), dataset=data, progress=False)


def test_batch_size_above_every_client_gives_the_trajectory_of_the_largest_client_batch():
    probe = Simulation(_config())
    n_max = int(probe.data.counts.max())
    assert n_max < 40                                      # synthetic max_samples bounds it
    trajectories = []
    for batch in (n_max, 10**8):
        for mode in ({"local_steps": 3}, {"local_steps": None, "local_epochs": 2}):
            sim = Simulation(_config(batch_size=batch, **mode))
            assert sim.batch_size == n_max and sim.executor.batch_size == n_max
            assert sim.config["client"]["batch_size"] == batch  # the user's value is kept
            params = []
            for _ in range(3):
                sim.step()
                params.append({k: v.clone() for k, v in sim.state.params.items()})
            trajectories.append(params)
    # bit for bit: batch 10**8 is batch n_max (steps and epochs modes)
    for a, b in ((trajectories[0], trajectories[2]), (trajectories[1], trajectories[3])):
        for pa, pb in zip(a, b):
            assert all(torch.equal(pa[k], pb[k]) for k in pa)
    # and training moved the model (the comparison is not between two untouched models)
    start = Simulation(_config()).state.params
    assert not all(torch.equal(start[k], trajectories[0][0][k]) for k in start)


@pytest.mark.parametrize("field", ["x", "x_test"])
def test_user_dataset_with_non_finite_features_is_refused(field):
    import dataclasses

    data = build_from_arrays(np.ones((40, 60), np.float32), np.arange(40) % 10, 4, "iid", seed=0)
    bad = getattr(data, field).clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ConfigError, match=f"FederatedDataset.{field} contains NaN or inf"):
        fedopt.run(_config(), dataset=dataclasses.replace(data, **{field: bad}), progress=False)


def test_label_counts_refuses_a_histogram_too_large_to_allocate():
    data = build_from_arrays(np.ones((40, 2), np.float32), np.arange(40) % 10, 4, "iid", seed=0,
                             num_classes=2**27)
    with pytest.raises(ValueError, match=r"label_counts: 4 clients x 134217728 classes"):
        data.label_counts()
    small = build_from_arrays(np.ones((40, 2), np.float32), np.arange(40) % 10, 4, "iid", seed=0)
    assert small.label_counts().sum().item() == small.x.shape[0]   # every train row counted once


def test_every_executor_is_built_from_the_capped_batch(monkeypatch):
    seen = {}

    def capture(config, data, trainer):
        seen["batch"] = config["client"]["batch_size"]   # Ray ships this config to its workers
        seen["n_max"] = int(data.counts.max())
        raise RuntimeError("stop here")

    monkeypatch.setattr(simulation, "build_executor", capture)
    with pytest.raises(RuntimeError, match="stop here"):
        Simulation(_config("ray", batch_size=10**8))
    assert seen["batch"] == seen["n_max"] < 10**8
