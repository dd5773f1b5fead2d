"""client.estimator on algorithms other than FedZO: the same oracle swap gives zeroth-order
FedAvg (== FedZO exactly), SCAFFOLD, FedProx and the asynchronous family on the virtual clock,
with queries equal to the evaluations the trainer actually made; algorithms whose clients cannot
take an estimator are refused naming client.estimator."""
import numpy as np
import pytest
import torch

import fedopt
from fedopt.config import validate
from fedopt.engine.local import LocalTrainer
from fedopt.schema import ConfigError
from fedopt.zo.objectives import (FunctionModel, function_dataset, spd_quadratic,
                                  spd_quadratic_optimum, spd_quadratic_rows, value)

D, N = 5, 8
EST = {"name": "gaussian", "directions": 4, "mu": 1e-4}


def run(algorithm, rounds=40, seed=0, **extra):
    rows = spd_quadratic_rows(N, D, seed=seed)
    cfg = {"seed": seed, "data": {"name": "regression", "num_clients": N},
           "algorithm": {"rounds": rounds, "clients_per_round": 4, **algorithm},
           "client": {"local_steps": 3, "batch_size": 1, "lr_decay": 0.97,
                      "optimizer": {"name": "sgd", "lr": 0.02}, "estimator": EST},
           "executor": {"dtype": "float64"}, "eval_every": rounds, "eval_train": False, **extra}
    res = fedopt.run(cfg, dataset=function_dataset(torch.tensor(rows)),
                     model=FunctionModel(spd_quadratic, torch.zeros(D, dtype=torch.float64)),
                     loss=value, metrics={}, progress=False)
    x0 = torch.zeros(1, D, dtype=torch.float64)
    f0 = float(spd_quadratic(x0, torch.tensor(rows)[None]).mean())
    return res, f0, spd_quadratic_optimum(rows, D)[1]


@pytest.fixture
def counted(monkeypatch):
    """Counts every model the trainer's batched_loss evaluates (the clients' queries)."""
    box = [0]
    real = LocalTrainer.batched_loss

    def counting(self, y, batch):
        box[0] += next(iter(y.values())).shape[0]
        return real(self, y, batch)

    monkeypatch.setattr(LocalTrainer, "batched_loss", counting)
    return box


def test_fedavg_with_an_estimator_is_fedzo():
    a, _, _ = run({"name": "fedavg", "aggregation_weights": "uniform"})
    b, _, _ = run({"name": "fedzo"})
    assert torch.equal(a.final_params["x"], b.final_params["x"])
    assert a.final("queries") == b.final("queries") == 40 * 4 * 3 * (4 + 1)


@pytest.mark.parametrize("algorithm,extra", [
    ({"name": "scaffold"}, {}),
    ({"name": "fedprox", "mu": 0.01}, {}),
    ({"name": "fedbuff", "buffer_size": 2},
     {"clock": {"compute": {"name": "exponential", "shift": 0.5, "scale": 1.0}}}),
])
def test_zeroth_order_clients_count_every_query_and_make_progress(counted, algorithm, extra):
    res, f0, f_star = run(algorithm, **extra)
    assert res.final("queries") == counted[0] > 0
    assert (res.final("test_loss") - f_star) < 0.2 * (f0 - f_star)


@pytest.mark.parametrize("algorithm,match", [
    ({"name": "fedspeed", "rho": 0.05}, "fedspeed does not take"),
    ({"name": "scaffold", "option": "I"}, "scaffold does not take"),
    ({"name": "zo_ranksgd"}, "zo_ranksgd does not take"),
    ({"name": "fedcbo"}, "fedcbo does not take"),
])
def test_clients_that_cannot_take_an_estimator_are_refused(algorithm, match):
    cfg = {"data": {"name": "regression", "num_clients": 4}, "model": {"name": "logreg"},
           "algorithm": {"rounds": 1, "clients_per_round": 2, **algorithm},
           "client": {"local_steps": 1, "estimator": EST}}
    with pytest.raises(ConfigError, match=rf"^client\.estimator: .*{match}"):
        validate(cfg)


def test_zeroth_order_clients_in_real_time_are_refused_since_queries_would_go_uncounted():
    cfg = {"data": {"name": "regression", "num_clients": 4}, "model": {"name": "logreg"},
           "algorithm": {"name": "async_fedavg", "rounds": 1, "clients_per_round": 2},
           "client": {"local_steps": 1, "loss": "mse", "estimator": EST},
           "executor": {"name": "ray", "realtime": True}}
    with pytest.raises(ConfigError, match=r"^executor\.realtime: real-time runs do not count"):
        validate(cfg)
