"""FedSpeed against independent oracles (federated.md §3, §5 items 16–23): FedDyn at ρ = 0,
FedAvg with the correction switched off, FedSAM against a plain autograd loop, the exact
(SAM-perturbed) stationary point of heterogeneous least squares, and the server's add-back."""
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

import fedopt
from fedopt.algorithms.client_state import ClientTable, population_weights
from fedopt.algorithms.feddyn import TABLE_KEY
from fedopt.algorithms.fedspeed import FedSpeed
from fedopt.config import ConfigError, load_config
from fedopt.engine.batches import plan_batches
from fedopt.engine.executor import VectorizedExecutor
from fedopt.engine.local import FunctionalModel, LocalTrainer, model_params
from fedopt.engine.program import SAM
from fedopt.optim import make
from fedopt.simulation import build_algorithm
from tests.algorithms.problems import Recording, ce_data, ce_model, D, LeastSquaresTrainer, _Vector, least_squares_data

# --------------------------------------------------------------------------- problems


def client_quadratics(data):
    """(H_i, b_i) with ∇F_i(w) = H_i w − b_i."""
    off = data.offsets.numpy()
    out = []
    for i in range(len(off) - 1):
        a, t = data.x[off[i]:off[i + 1], :-1].numpy(), data.x[off[i]:off[i + 1], -1].numpy()
        out.append((a.T @ a / len(t), a.T @ t / len(t)))
    return out


def perturbed_stationary_point(data, p, rho, alpha, normalize):
    """θ with Σ_i p_i [(1 − α)∇F_i(θ) + α ∇F_i(θ + e_i(θ))] = 0, e_i = ρ ∇F_i/‖∇F_i‖ or ρ ∇F_i.

    For quadratics ∇F_i(θ + e) = ∇F_i(θ) + H_i e, so the unnormalised case is linear:
    Σ p_i (I + αρH_i)(H_i θ − b_i) = 0; the normalised one is solved by fixed-point iteration
    θ ← H̄⁻¹ Σ p_i (b_i − αρ H_i u_i(θ)), u_i = ∇F_i(θ)/‖∇F_i(θ)‖ (ρ = 0: the optimum)."""
    quad = client_quadratics(data)
    eye = np.eye(D)
    if not normalize:
        lhs = sum(pi * (eye + alpha * rho * h) @ h for pi, (h, _) in zip(p, quad))
        rhs = sum(pi * (eye + alpha * rho * h) @ b for pi, (h, b) in zip(p, quad))
        return np.linalg.solve(lhs, rhs)
    h_bar = sum(pi * h for pi, (h, _) in zip(p, quad))
    theta = np.linalg.solve(h_bar, sum(pi * b for pi, (_, b) in zip(p, quad)))
    for _ in range(500):
        u = [(h @ theta - b) / np.linalg.norm(h @ theta - b) for h, b in quad]
        new = np.linalg.solve(h_bar, sum(pi * (b - alpha * rho * h @ ui)
                                         for pi, (h, b), ui in zip(p, quad, u)))
        if np.linalg.norm(new - theta) < 1e-15:
            return new
        theta = new
    raise AssertionError("oracle did not converge")


def _config(**algorithm):
    return {"seed": 5, "data": {"name": "synthetic", "num_clients": 20},
            "model": {"name": "mlp", "hidden": [8]},
            "algorithm": {"name": "fedspeed", "rounds": 6, "clients_per_round": 4, **algorithm},
            "client": {"local_steps": 5, "batch_size": 10,
                       "optimizer": {"name": "sgd", "lr": 0.05, "weight_decay": 1e-3}},
            "executor": {"dtype": "float64"}, "eval_train": False, "checkpoint_every": 1}


def _same_run(a, b):
    for k, v in a.final_params.items():
        assert torch.equal(v, b.final_params[k]), k
    assert [m["test_loss"] for m in a.metrics] == [m["test_loss"] for m in b.metrics]


# --------------------------------------------------------------------------- reductions

def test_rho_zero_is_feddyn_with_alpha_one_over_lambda():
    """Oracle 16, through configs: FedSpeed(λ = 4, ρ = 0) ≡ FedDyn(α = 0.25), same seed."""
    speed = fedopt.run(_config(lam=4.0, rho=0.0), progress=False)
    dyn = fedopt.run(_config(name="feddyn", alpha=0.25), progress=False)
    _same_run(speed, dyn)


def test_without_correction_and_perturbation_it_is_fedavg():
    """Oracle 17: ρ = 0, λ = ∞ and the prox-correction machinery off ⇒ FedAvg (uniform)."""
    speed = fedopt.run(_config(lam=math.inf, rho=0.0, prox_correction=False,
                               aggregation_weights="uniform"), progress=False)
    avg = fedopt.run(_config(name="fedavg", aggregation_weights="uniform"), progress=False)
    _same_run(speed, avg)


@pytest.mark.parametrize("normalize,alpha", [(True, 1.0), (False, 0.5), (True, 0.3)])
def test_without_correction_it_is_fedsam_against_an_autograd_loop(normalize, alpha):
    """Oracles 18, 22, 23: prox-correction off, λ = ∞, ρ > 0 ⇒ every client runs
    w ← w − η[(1 − α)g1 + α ∇ℓ(w + e)], e = ρ g1/‖g1‖ or ρ g1 (same minibatch), and the server
    averages — here written as a per-client loop with torch autograd."""
    sizes = [6, 11, 8, 5]
    data, model = ce_data(sizes, seed=3), ce_model(3)
    x0 = model_params(model)
    rho, lr, B, K = 0.3, 0.2, 4, 5
    alg = FedSpeed(np.array(sizes), 3, aggregation_weights="uniform", seed=1, lam=math.inf,
                   rho=rho, alpha=alpha, normalize_perturbation=normalize, prox_correction=False)
    trainer = LocalTrainer(FunctionalModel(model), make("sgd", lr=lr), alg.local_program())
    ex = VectorizedExecutor(data, trainer, batch_size=B, local_steps=K, local_epochs=None, seed=0)
    state, _ = alg.run_round(alg.init(x0), ex, None)
    assert (ex.trainer.program.oracle.alpha, ex.trainer.program.oracle.normalize) == (alpha, normalize)

    def grad(params, xb, yb):
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        loss = nn.functional.cross_entropy(functional_call(model, leaves, (xb,)), yb)
        return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))

    ids = alg.sample_clients(0)
    expected = {k: torch.zeros_like(v) for k, v in x0.items()}
    for i in ids:
        plan = plan_batches(0, 0, np.array([i]), data.offsets.numpy(), B, np.array([K]))
        w = {k: v.clone() for k, v in x0.items()}
        for k in range(K):
            rows = plan.rows[k, 0][plan.weight[k, 0] > 0]
            xb, yb = data.x[rows], data.y[rows]
            g1 = grad(w, xb, yb)
            norm = torch.sqrt(sum((g * g).sum() for g in g1.values()))
            e = {n: rho * g / norm if normalize else rho * g for n, g in g1.items()}
            assert abs(float(torch.sqrt(sum((v * v).sum() for v in e.values()))) - rho) < 1e-12 \
                or not normalize
            g2 = grad({n: w[n] + e[n] for n in w}, xb, yb)
            w = {n: w[n] - lr * ((1 - alpha) * g1[n] + alpha * g2[n]) for n in w}
        for n in w:
            expected[n] += w[n] / len(ids)
    for n in expected:
        torch.testing.assert_close(state.params[n], expected[n], rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- the server

def test_correction_averages_agree_under_full_participation():
    """Oracle 19: 'all' and 'sampled' add-backs coincide when every client takes part."""
    def run(average):
        return fedopt.run(_config(clients_per_round=20, aggregation_weights="uniform",
                                  correction_average=average), progress=False)
    a, s = run("all"), run("sampled")
    for k, v in a.final_params.items():
        torch.testing.assert_close(v, s.final_params[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("average", ["all", "sampled"])
def test_server_adds_back_the_corrections(average):
    """Oracle 20 and §3.4/§3.3 server rules, by independent bookkeeping of H_i = Σ_s Δ_i^s:
    'all': x_{t+1} = mean_P(w_K) + mean_all(H);  'sampled': x_{t+1} = mean_P(w_K + H_i)."""
    sizes = [7, 12, 5, 9, 11, 6]
    data, model = ce_data(sizes, seed=1), ce_model(1)
    alg = FedSpeed(np.array(sizes), 3, aggregation_weights="uniform", seed=7, lam=5.0, rho=0.2,
                   correction_average=average)
    trainer = LocalTrainer(FunctionalModel(model), make("sgd", lr=0.1), alg.local_program())
    ex = Recording(VectorizedExecutor(data, trainer, batch_size=4, local_steps=4,
                                      local_epochs=None, seed=0))
    state = alg.init(model_params(model))
    h = {k: np.zeros((len(sizes),) + tuple(v.shape)) for k, v in state.params.items()}
    for _ in range(4):
        state, _ = alg.run_round(state, ex, None)
        x, ids, _, out = ex.calls[-1]
        for k in h:
            y = out.local_params[k].numpy()
            h[k][ids] += y - x[k].numpy()
            if average == "all":
                expected = y.mean(0) + h[k].mean(0)
            else:
                expected = (y + h[k][ids]).mean(0)
            np.testing.assert_allclose(state.params[k].numpy(), expected, rtol=1e-10, atol=1e-12)
        table = ClientTable(state.clients[TABLE_KEY])
        for k in h:
            np.testing.assert_allclose(table.dense()[k].numpy(), h[k], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("rho,alpha,variant", [(0.0, 1.0, "code"), (0.05, 1.0, "code"),
                                               (0.05, 0.5, "paper")])
def test_fixed_point_is_the_exact_perturbed_stationary_point(rho, alpha, variant):
    """Oracle 21: heterogeneous Hessians, full participation, full-batch K = 20 steps. ρ = 0:
    the minimiser of Σ_i F_i; ρ > 0: the stationary point of the SAM-perturbed objective
    (closed form / fixed-point iteration above), which is O(ρ) away from it."""
    sizes = [5, 9, 7, 12, 6]
    data = least_squares_data(sizes)
    p = population_weights(np.array(sizes), "uniform")
    normalize = variant == "code"
    target = perturbed_stationary_point(data, p, rho, alpha, normalize)
    optimum = perturbed_stationary_point(data, p, 0.0, alpha, normalize)
    alg = FedSpeed(np.array(sizes), 5, aggregation_weights="uniform", lam=0.5, rho=rho,
                   alpha=alpha, **_variant(variant))
    trainer = LeastSquaresTrainer(FunctionalModel(_Vector()), make("sgd", lr=0.05),
                                  alg.local_program())
    ex = VectorizedExecutor(data, trainer, batch_size=32, local_steps=20, local_epochs=None,
                            seed=0)
    state = alg.init({"w": torch.zeros(D, dtype=torch.float64)})
    for _ in range(150):
        state, _ = alg.run_round(state, ex, None)
    # the installed perturbed trainer keeps the least-squares loss
    assert isinstance(ex.trainer, LeastSquaresTrainer)
    assert np.linalg.norm(state.params["w"].numpy() - target) < 1e-9
    if rho:
        assert np.linalg.norm(target - optimum) > 1e-3


def _variant(name):
    return {"normalize_perturbation": name == "code",
            "correction_average": "all" if name == "code" else "sampled"}


# --------------------------------------------------------------------------- config / resume

def test_defaults_follow_the_paper_and_lambda_is_the_inverse_of_the_code_lamb():
    cfg = load_config(_config())
    alg = build_algorithm(cfg["algorithm"], np.ones(20, dtype=int), 0, cfg)
    assert (alg.lam, alg.rho, alg.alpha) == (10.0, 0.1, 1.0)
    assert alg.normalize_perturbation and alg.correction_average == "all"
    program = alg.local_program()
    assert program.prox_mu == pytest.approx(0.1) and program.oracle == SAM(0.1, 1.0, True)
    cfg = load_config(_config(variant="paper", correction_average="all"))
    alg = build_algorithm(cfg["algorithm"], np.ones(20, dtype=int), 0, cfg)
    assert not alg.normalize_perturbation and alg.correction_average == "all"


@pytest.mark.parametrize("variant", [{}, {"variant": "paper", "alpha": 0.5}])
def test_resumed_fedspeed_run_reproduces_the_uninterrupted_one(tmp_path, variant):
    full = fedopt.run(_config(**variant), out_dir=tmp_path / "full", progress=False)
    part = _config(**variant)
    part["algorithm"]["rounds"] = 3
    fedopt.run(part, out_dir=tmp_path / "part", progress=False)
    resumed = fedopt.run(_config(**variant), out_dir=tmp_path / "part", progress=False,
                         resume=True)
    _same_run(full, resumed)


@pytest.mark.parametrize("key,value", [("lam", 0), ("lam", -1.0), ("rho", -0.1), ("alpha", 1.5),
                                       ("variant", "preprint"), ("correction_average", "some"),
                                       ("normalize_perturbation", "yes"),
                                       ("prox_correction", 1)])
def test_bad_values_are_config_errors_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"^algorithm\.{key}"):
        load_config(_config(**{key: value}))
