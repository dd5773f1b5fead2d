"""Clustered FedCBO (each client one particle): with α = 0, all peers and λγ = 1 a client's new
model is exactly the mean of the others'; on two clusters of quadratics every client reaches its
own cluster's minimiser and picks only same-cluster peers once the scores have formed."""
import numpy as np
import torch

from fedopt.config import validate
from fedopt.simulation import Simulation
from fedopt.algorithms.fedcbo_clustered import KEY, ClusteredFedCBO
from fedopt.engine.executor import VectorizedExecutor
from fedopt.engine.local import FunctionalModel, LocalTrainer
from fedopt.engine.program import LocalProgram
from fedopt.optim import make
from fedopt.zo.objectives import FunctionModel, function_dataset, spd_quadratic, value

D, N = 3, 8
CENTERS = np.array([[1.0, -1.0, 2.0], [-2.0, 0.5, 0.0]])


def cluster_rows():
    """f_i(x) = ½‖x − c_{i mod 2}‖²: rows [I (d·d), c]."""
    return np.array([np.r_[np.eye(D).ravel(), CENTERS[i % 2]] for i in range(N)])


def test_alpha_zero_full_step_is_the_mean_of_the_other_models():
    rows = torch.tensor(cluster_rows())
    x0 = torch.zeros(D, dtype=torch.float64)
    trainer = LocalTrainer(FunctionalModel(FunctionModel(spd_quadratic, x0)),
                           make("sgd", lr=0.1), LocalProgram(loss=value))
    ex = VectorizedExecutor(function_dataset(rows), trainer, batch_size=1, local_steps=1,
                            local_epochs=None, seed=0)
    alg = ClusteredFedCBO(np.ones(N, dtype=np.int64), N, peers=N - 1, alpha=0.0, lam_gamma=1.0)
    state = alg.init({"x": x0})
    models = torch.randn(N, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    state.extra[KEY]["models"] = models.clone()
    state, stats = alg.run_round(state, ex, make("sgd", lr=0.0))
    want = (models.sum(0, keepdim=True) - models) / (N - 1)
    assert torch.allclose(state.extra[KEY]["models"], want, atol=1e-12)
    assert stats["queries"] == N * N                       # N − 1 peers and itself, each


def test_clients_find_their_cluster():
    rows = cluster_rows()
    cfg = {"data": {"name": "regression", "num_clients": N},
           "algorithm": {"name": "fedcbo_clustered", "rounds": 60, "clients_per_round": N,
                         "peers": 3, "alpha": 10.0, "lam_gamma": 0.5},
           "client": {"local_steps": 2, "batch_size": 1, "optimizer": {"name": "sgd", "lr": 0.1}},
           "executor": {"dtype": "float64"}, "eval_every": 60, "eval_train": False}
    sim = Simulation(validate(cfg), dataset=function_dataset(
        torch.tensor(rows)), model=FunctionModel(spd_quadratic, torch.zeros(D, dtype=torch.float64)),
        loss=value, metrics={})
    sim.run()
    models = sim.state.extra[KEY]["models"].numpy()
    for j in range(N):
        assert np.linalg.norm(models[j] - CENTERS[j % 2]) < 0.05
        peers = sim.algorithm.select_peers(sim.state, j)
        assert (peers % 2 == j % 2).all(), (j, peers)
