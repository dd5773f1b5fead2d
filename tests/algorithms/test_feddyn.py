"""FedDyn against independent oracles (federated.md §4.2, §5 items 20, 28, 29, 21):
FedProx in round 0, the server identity, the per-client state update, and the exact global
optimum of heterogeneous least squares as its fixed point (where FedProx and FedAvg drift)."""
import numpy as np
import pytest
import torch

import fedopt
from fedopt.algorithms import FedAvg
from fedopt.algorithms.client_state import ClientTable, population_weights
from fedopt.algorithms.feddyn import TABLE_KEY, FedDyn
from fedopt.config import ConfigError, load_config
from fedopt.engine.executor import VectorizedExecutor
from fedopt.engine.local import FunctionalModel, LocalTrainer, model_params
from fedopt.engine.program import LocalProgram
from fedopt.optim import make
from tests.algorithms.problems import Recording, ce_data, ce_model, D, LeastSquaresTrainer, _Vector, global_optimum, least_squares_data

# --------------------------------------------------------------------------- problems


def ls_executor(data, lr, steps, mu=0.0, batch=32):
    trainer = LeastSquaresTrainer(FunctionalModel(_Vector()), make("sgd", lr=lr),
                                  LocalProgram(prox_mu=mu))
    return VectorizedExecutor(data, trainer, batch_size=batch, local_steps=steps,
                              local_epochs=None, seed=0)


def ce_executor(data, model, mu, opt=None):
    trainer = LocalTrainer(FunctionalModel(model), opt or make("sgd", lr=0.1, momentum=0.5),
                           LocalProgram(prox_mu=mu))
    return VectorizedExecutor(data, trainer, batch_size=4, local_steps=5, local_epochs=None,
                              seed=0, chunk_size=2)


# --------------------------------------------------------------------------- oracles

def test_round_zero_is_fedprox_plus_the_add_back():
    """Oracle 28: all H_i = 0 in round 0, so the clients are FedProx(μ = α) clients and the
    server adds mean_all(H) = (m/N)·mean_P(Δ) to FedProx's model."""
    sizes = [7, 12, 5, 9, 11, 6]
    data, model = ce_data(sizes), ce_model()
    x0 = model_params(model)
    alpha, m, n = 0.3, 3, len(sizes)
    dyn = FedDyn(np.array(sizes), m, aggregation_weights="uniform", seed=2, coef=alpha)
    prox = FedAvg(np.array(sizes), m, aggregation_weights="uniform", seed=2, prox_mu=alpha)
    d1, _ = dyn.run_round(dyn.init(x0), ce_executor(data, model, alpha), None)
    p1, _ = prox.run_round(prox.init(x0), ce_executor(data, model, alpha), None)
    for k in x0:
        expected = p1.params[k] + (m / n) * (p1.params[k] - x0[k])
        torch.testing.assert_close(d1.params[k], expected, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("weights,m", [("num_samples", 3), ("uniform", 6)])
def test_state_update_and_server_identity(weights, m):
    """Oracles 20 and 29: H_i ← H_i + (θ_i − θ) for sampled clients only; θ_{t+1} −
    Σ_P w_i θ_i = Σ_j p_j H_j; under full participation (uniform) the add-back after t rounds
    is the sum over rounds of the mean deltas."""
    sizes = [7, 12, 5, 9, 11, 6]
    data, model = ce_data(sizes, seed=1), ce_model(1)
    alg = FedDyn(np.array(sizes), m, aggregation_weights=weights, seed=4, coef=0.2)
    ex = Recording(ce_executor(data, model, 0.2, make("adam", lr=0.02)))
    p = population_weights(np.array(sizes), weights)
    state = alg.init(model_params(model))
    h = {k: np.zeros((len(sizes),) + tuple(v.shape)) for k, v in state.params.items()}
    mean_deltas = {k: np.zeros(tuple(v.shape)) for k, v in state.params.items()}
    for r in range(4):
        state, _ = alg.run_round(state, ex, None)
        x, ids, w, out = ex.calls[-1]
        for k in h:
            delta = (out.local_params[k] - x[k].unsqueeze(0)).numpy()
            h[k][ids] += delta
            mean_deltas[k] += delta.mean(0)
        table = ClientTable(state.clients[TABLE_KEY])
        for k in h:
            np.testing.assert_allclose(table.dense()[k].numpy(), h[k], rtol=1e-12, atol=1e-14)
            avg = np.tensordot(w, out.local_params[k].numpy(), 1)
            np.testing.assert_allclose(state.params[k].numpy() - avg, np.tensordot(p, h[k], 1),
                                       rtol=1e-10, atol=1e-12)
            if m == len(sizes):
                np.testing.assert_allclose(state.params[k].numpy() - avg, mean_deltas[k],
                                           rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("weights", ["uniform", "num_samples"])
def test_fixed_point_is_the_global_optimum_where_fedprox_and_fedavg_drift(weights):
    """Oracle 21 for FedDyn: heterogeneous Hessians, full-batch K = 20 local steps; FedDyn
    converges to argmin Σ_j p_j F_j (closed form) with full and with partial participation."""
    sizes = [5, 9, 7, 12, 6]
    data = least_squares_data(sizes)
    w_star = global_optimum(data, population_weights(np.array(sizes), weights))
    alpha, counts = 2.0, np.array(sizes)
    cases = {"feddyn": (FedDyn(counts, 5, aggregation_weights=weights, coef=alpha), alpha, 150),
             "feddyn-partial": (FedDyn(counts, 2, aggregation_weights=weights, seed=1,
                                       coef=alpha), alpha, 300),
             "fedprox": (FedAvg(counts, 5, aggregation_weights=weights, prox_mu=alpha), alpha, 150),
             "fedavg": (FedAvg(counts, 5, aggregation_weights=weights), 0.0, 150)}
    err = {}
    for name, (alg, mu, rounds) in cases.items():
        ex = ls_executor(data, 0.05, 20, mu=mu)
        state = alg.init({"w": torch.zeros(D, dtype=torch.float64)})
        for _ in range(rounds):
            state, _ = alg.run_round(state, ex, None)
        err[name] = np.linalg.norm(state.params["w"].numpy() - w_star)
    assert err["feddyn"] < 1e-10
    assert err["feddyn-partial"] < 1e-8
    assert err["fedprox"] > 0.1 and err["fedavg"] > 0.1


# --------------------------------------------------------------------------- config / resume

def _config(**algorithm):
    return {"seed": 1, "data": {"name": "synthetic", "num_clients": 20},
            "model": {"name": "logreg"},
            "algorithm": {"name": "feddyn", "rounds": 6, "clients_per_round": 4, **algorithm},
            "client": {"local_steps": 5, "batch_size": 10, "optimizer": {"name": "sgd", "lr": 0.05}},
            "checkpoint_every": 1}


def test_resumed_feddyn_run_reproduces_the_uninterrupted_one(tmp_path):
    full = fedopt.run(_config(alpha=0.1), out_dir=tmp_path / "full", progress=False)
    part = _config(alpha=0.1)
    part["algorithm"]["rounds"] = 3
    fedopt.run(part, out_dir=tmp_path / "part", progress=False)
    resumed = fedopt.run(_config(alpha=0.1), out_dir=tmp_path / "part", progress=False,
                         resume=True)
    for k, v in full.final_params.items():
        assert torch.equal(v, resumed.final_params[k])
    assert [m["test_loss"] for m in resumed.metrics] == [m["test_loss"] for m in full.metrics]


@pytest.mark.parametrize("value", [0, -0.1, "big"])
def test_bad_alpha_is_a_config_error_naming_the_key(value):
    with pytest.raises(ConfigError, match=r"^algorithm\.alpha"):
        load_config(_config(alpha=value))
