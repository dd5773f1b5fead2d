"""FedZO: convergence on a heterogeneous strongly convex federated problem with a closed-form
optimum (spec T9), exact query counting against a counting trainer, and the config contract end
to end through ``fedopt run``."""
import json

import numpy as np
import pytest
import torch
import yaml

import fedopt
from fedopt.algorithms.fedzo import FedZO
from fedopt.config import validate
from fedopt.engine.contract import SharedStart
from fedopt.engine.executor import VectorizedExecutor
from fedopt.engine.local import FunctionalModel, LocalTrainer
from fedopt.engine.program import LocalProgram
from fedopt.optim import make
from fedopt.schema import ConfigError
from fedopt.zo.estimators import ZerothOrder
from fedopt.zo.objectives import (FunctionModel, function_dataset, spd_quadratic,
                                  spd_quadratic_optimum, spd_quadratic_rows, value)
from fedopt.simulations import cli

D, N = 10, 10


def relative_gap(seed, clients_per_round):
    """(F(x_R) − F*) / (F(x_0) − F*) of FedZO on f_i = ½(x − c_i)ᵀA_i(x − c_i), eig(A_i) in
    [1, 10], x* = (Σ A_i)⁻¹ Σ A_i c_i; H = 5, q = 10 sphere directions, μ = 1e-4,
    η_r = 0.05 · 0.98^r (= q/(2 L d) decayed: the sampling/drift neighbourhood shrinks)."""
    rows = spd_quadratic_rows(N, D, seed=seed)
    _, f_star = spd_quadratic_optimum(rows, D)
    x0 = torch.zeros(D, dtype=torch.float64)
    cfg = {"seed": seed, "data": {"name": "regression", "num_clients": N},
           "algorithm": {"name": "fedzo", "rounds": 300, "clients_per_round": clients_per_round},
           "client": {"local_steps": 5, "batch_size": 1, "lr_decay": 0.98,
                      "optimizer": {"name": "sgd", "lr": 0.05},
                      "estimator": {"name": "sphere", "directions": 10, "mu": 1e-4}},
           "executor": {"dtype": "float64"}, "eval_every": 300, "eval_train": False}
    res = fedopt.run(cfg, dataset=function_dataset(torch.tensor(rows)),
                     model=FunctionModel(spd_quadratic, x0), loss=value, metrics={},
                     progress=False)
    f0 = float(spd_quadratic(x0[None], torch.tensor(rows)[None]).mean())
    return (res.final("test_loss") - f_star) / (f0 - f_star), res


@pytest.mark.parametrize("m,bound", [(N, 1e-2), (5, 5e-2)])
def test_fedzo_converges_to_the_closed_form_optimum(m, bound):
    runs = [relative_gap(seed, m) for seed in range(3)]
    gaps = [gap for gap, _ in runs]
    assert np.mean(gaps) < bound, gaps
    res = runs[0][1]
    assert res.final("queries") == 300 * m * 5 * (10 + 1)    # rounds·M·H·(q+1)


class CountingTrainer(LocalTrainer):
    evaluations = 0

    def batched_loss(self, y, batch):
        CountingTrainer.evaluations += next(iter(y.values())).shape[0]
        return super().batched_loss(y, batch)


@pytest.mark.parametrize("name,scheme", [("gaussian", "central"), ("coordinate", "forward")])
def test_queries_count_every_function_evaluation(name, scheme):
    rows = torch.tensor(spd_quadratic_rows(6, 3, seed=2))
    x0 = torch.zeros(3, dtype=torch.float64)
    oracle = ZerothOrder(name, 4, 1e-3, scheme)
    trainer = CountingTrainer(FunctionalModel(FunctionModel(spd_quadratic, x0)),
                              make("sgd", lr=0.01), LocalProgram(loss=value, oracle=oracle))
    ex = VectorizedExecutor(function_dataset(rows), trainer, batch_size=1, local_steps=3,
                            local_epochs=None, seed=0, chunk_size=2)
    alg = FedZO(np.ones(6, dtype=np.int64), 4, seed=0, oracle=oracle)
    state = alg.init({"x": x0})
    CountingTrainer.evaluations = 0
    for _ in range(3):
        state, stats = alg.run_round(state, ex)
    assert stats["queries"] == CountingTrainer.evaluations > 0
    assert state.extra["zo_queries"] == stats["queries"]


def test_fedzo_from_config_through_the_cli(tmp_path):
    cfg = {"seed": 1, "data": {"name": "regression", "num_clients": 8},
           "model": {"name": "logreg"},
           "algorithm": {"name": "fedzo", "rounds": 12, "clients_per_round": 4},
           "client": {"local_steps": 5, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.02},
                      "estimator": {"name": "gaussian", "directions": 8, "mu": 1e-3}},
           "eval_every": 4}
    path = tmp_path / "zo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["run", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
            .splitlines()]
    assert [r["round"] for r in rows] == [4, 8, 12]
    assert [r["queries"] for r in rows] == [r * 4 * 5 * (8 + 1) for r in (4, 8, 12)]
    assert rows[-1]["test_loss"] < rows[0]["test_loss"]


def test_estimator_config_errors_name_the_field():
    base = {"data": {"name": "regression", "num_clients": 4}, "model": {"name": "logreg"},
            "algorithm": {"name": "fedzo", "rounds": 1, "clients_per_round": 2},
            "client": {"local_steps": 1}}
    ok = validate({**base, "client": {"local_steps": 1, "estimator": {"name": "coordinate"}}})
    assert ok["client"]["estimator"] == {"name": "coordinate", "directions": 20, "mu": 1e-3,
                                         "scheme": "forward", "scale": "unbiased",
                                         "max_models": None}
    assert ok["algorithm"]["aggregation_weights"] == "uniform"
    with pytest.raises(ConfigError, match=r"^client\.estimator\.mu: must be > 0"):
        validate({**base, "client": {"local_steps": 1, "estimator": {"mu": 0.0}}})
    with pytest.raises(ConfigError, match=r"^client\.estimator\.directions"):
        validate({**base, "client": {"local_steps": 1, "estimator": {"directions": 0}}})
    with pytest.raises(ConfigError, match=r"^client\.estimator: algorithm\.name: fedcbo"):
        validate({**base, "algorithm": {"name": "fedcbo", "rounds": 1, "clients_per_round": 2},
                  "client": {"local_steps": 1, "estimator": {"name": "sphere"}}})


def test_more_directions_lower_the_plateau():
    """Spec T10: constant step, M = 5 of 10, 5 seeds: the final relative gap decreases with the
    number of directions q ∈ {1, 5, 25} (the estimator's variance (d − 1)‖g‖²/q sets the
    neighbourhood a constant step can reach)."""
    means = []
    for q in (1, 5, 25):
        gaps = []
        for seed in range(5):
            rows = spd_quadratic_rows(N, D, seed=seed)
            _, f_star = spd_quadratic_optimum(rows, D)
            x0 = torch.zeros(D, dtype=torch.float64)
            cfg = {"seed": seed, "data": {"name": "regression", "num_clients": N},
                   "algorithm": {"name": "fedzo", "rounds": 100, "clients_per_round": 5},
                   "client": {"local_steps": 5, "batch_size": 1,
                              "optimizer": {"name": "sgd", "lr": 0.005},
                              "estimator": {"name": "sphere", "directions": q, "mu": 1e-4}},
                   "executor": {"dtype": "float64"}, "eval_every": 100, "eval_train": False}
            res = fedopt.run(cfg, dataset=function_dataset(torch.tensor(rows)),
                             model=FunctionModel(spd_quadratic, x0), loss=value, metrics={},
                             progress=False)
            f0 = float(spd_quadratic(x0[None], torch.tensor(rows)[None]).mean())
            gaps.append((res.final("test_loss") - f_star) / (f0 - f_star))
        means.append(np.mean(gaps))
    assert means[0] > means[1] > means[2], means


def test_aircomp_selection_noise_and_noise_free_limit():
    """Spec T11: selection frequency ≈ exp(−1.28); at SNR ≥ 50 dB the round is noise-free
    FedZO over the selected devices (bit for bit); at finite SNR the injected noise has std σ_n
    (within 5 % over d = 20,000 coordinates)."""
    from fedopt.algorithms.fedzo import aircomp_noise_std, aircomp_select

    counts = np.zeros(50)
    for r in range(400):
        ids, h_min = aircomp_select(3, r, 50)
        counts[ids] += 1
        assert h_min >= 0.8
    assert abs(counts.mean() / 400 - np.exp(-1.28)) < 0.02
    assert aircomp_noise_std(4.0, 0.9, 100.0, 10, 3) == 0.0
    assert aircomp_noise_std(4.0, 0.9, 0.0, 10, 2) == pytest.approx(np.sqrt(4 / (0.9 * 10)) / 2)

    rows = torch.tensor(spd_quadratic_rows(8, 3, seed=2))
    x0 = torch.zeros(3, dtype=torch.float64)
    oracle = ZerothOrder("sphere", 4, 1e-3)
    trainer = LocalTrainer(FunctionalModel(FunctionModel(spd_quadratic, x0)),
                           make("sgd", lr=0.01), LocalProgram(loss=value, oracle=oracle))
    ex = VectorizedExecutor(function_dataset(rows), trainer, batch_size=1, local_steps=2,
                            local_epochs=None, seed=0)
    results = {}
    for snr in (100.0, 0.0):
        alg = FedZO(np.ones(8, dtype=np.int64), 8, seed=0, oracle=oracle)
        alg.aircomp_snr_db = snr
        state, stats = alg.run_round(alg.init({"x": x0}), ex)
        results[snr] = state.params["x"]
    ids, h_min = aircomp_select(0, 0, 8)
    out = ex.run_jobs(SharedStart({"x": x0}), ids, np.zeros(len(ids), np.int64),
                      np.full(len(ids), 1 / len(ids)), keep_local=True)
    assert torch.equal(results[100.0], x0 + out.delta_sum["x"])
    p_max = float((out.local_params["x"] - x0).pow(2).sum(1).max())
    sigma = aircomp_noise_std(p_max, h_min, 0.0, 3, len(ids))
    assert sigma > 0 and not torch.equal(results[0.0], results[100.0])
    # the noise law itself, on many coordinates
    from fedopt.algorithms.fedzo import STREAM_AIRCOMP
    from fedopt.rng import keyed_normal
    z = keyed_normal(0, STREAM_AIRCOMP, 0, 1, np.arange(20_000))
    assert abs(z.std() - 1) < 0.05
    assert torch.allclose(results[0.0] - results[100.0],
                          sigma * torch.as_tensor(z[:3]), atol=1e-12)
