"""FedCBO (server particles, clients as black boxes): energies equal the federated objective at
the particles, exact reductions (σ = 0, α = 0, λ·dt = 1: the model is the particles' mean),
query counts, and convergence to the closed-form optimum of heterogeneous SPD quadratics."""
import numpy as np
import torch

import fedopt
from fedopt.algorithms.fedcbo import PARTICLES_KEY, FedCBO
from fedopt.engine.executor import VectorizedExecutor
from fedopt.engine.local import FunctionalModel, LocalTrainer
from fedopt.engine.program import LocalProgram
from fedopt.optim import make
from fedopt.zo.cbo import LossOnly
from fedopt.zo.objectives import (FunctionModel, function_dataset, spd_quadratic,
                                  spd_quadratic_optimum, spd_quadratic_rows, value)

D, N = 5, 10


def setup(seed=0, **kw):
    rows = torch.tensor(spd_quadratic_rows(N, D, seed=seed))
    x0 = torch.zeros(D, dtype=torch.float64)
    trainer = LocalTrainer(FunctionalModel(FunctionModel(spd_quadratic, x0)), make("sgd", lr=0.1),
                           LocalProgram(loss=value, oracle=LossOnly()))
    ex = VectorizedExecutor(function_dataset(rows), trainer, batch_size=1, local_steps=1,
                            local_epochs=None, seed=seed)
    alg = FedCBO(np.ones(N, dtype=np.int64), N, seed=seed, **kw)
    return rows, ex, alg, alg.init({"x": x0})


def test_energies_are_the_federated_objective_at_the_particles():
    rows, ex, alg, state = setup(particles=7)
    ids = np.arange(N)
    energy, queries, _ = alg.energies(state, ex, ids, alg.weights(ids))
    x = state.extra[PARTICLES_KEY]
    want = spd_quadratic(x, rows[None].expand(7, N, rows.shape[1])).mean(1)  # F(X^j)
    assert torch.allclose(energy, want, atol=1e-12)
    assert queries == N * 7


def test_sigma_zero_alpha_zero_full_step_is_the_particle_mean():
    _, ex, alg, state = setup(particles=6, alpha=0.0, sigma=0.0, lam=1.0, dt=1.0)
    mean = state.extra[PARTICLES_KEY].mean(0)
    state, stats = alg.run_round(state, ex)
    assert torch.allclose(state.params["x"], mean, atol=1e-14)
    assert torch.allclose(state.extra[PARTICLES_KEY], mean.expand(6, D), atol=1e-14)
    state, stats = alg.run_round(state, ex)
    assert stats["queries"] == 2 * N * 6


def test_fedcbo_converges_to_the_closed_form_optimum():
    for seed in range(2):
        rows = spd_quadratic_rows(N, D, seed=seed)
        x_star, f_star = spd_quadratic_optimum(rows, D)
        x0 = torch.zeros(D, dtype=torch.float64)
        cfg = {"seed": seed, "data": {"name": "regression", "num_clients": N},
               "algorithm": {"name": "fedcbo", "rounds": 60, "clients_per_round": N,
                             "particles": 100, "alpha": 1000.0, "sigma": 0.5, "dt": 0.1},
               "client": {"local_steps": 1, "batch_size": 1}, "executor": {"dtype": "float64"},
               "eval_every": 60, "eval_train": False}
        res = fedopt.run(cfg, dataset=function_dataset(torch.tensor(rows)),
                         model=FunctionModel(spd_quadratic, x0), loss=value, metrics={},
                         progress=False)
        f0 = float(spd_quadratic(x0[None], torch.tensor(rows)[None]).mean())
        assert (res.final("test_loss") - f_star) / (f0 - f_star) < 1e-2
        assert np.linalg.norm(res.final_params["x"].numpy() - x_star) < 0.1 * np.linalg.norm(x_star)
        assert res.final("queries") == 60 * N * 100
