"""A user's loss and metrics, on a regression data set, in-process and on Ray."""
import json

import numpy as np
import pytest
import torch

import fedopt
from fedopt.config import ConfigError, load_config
from fedopt.data import build_dataset
from fedopt.simulation import Simulation
from tests.server.ray_fixtures import ray_session  # noqa: F401


def squared_error(outputs, targets):
    """A user loss: the same per-sample (o − t)² as the built-in mse, written by hand."""
    return (outputs.squeeze(-1) - targets) ** 2


def mean_abs_error(outputs, targets):
    return (outputs.squeeze(-1) - targets).abs()


def _config(**client):
    return {"seed": 3, "data": {"name": "regression", "num_clients": 6, "samples_per_client": 20,
                                "num_features": 5},
            "model": {"name": "logreg"},
            "algorithm": {"name": "fedavg", "rounds": 3, "clients_per_round": 6},
            "client": {"local_steps": 1, "batch_size": 1000,
                       "optimizer": {"name": "sgd", "lr": 0.3}, **client},
            "executor": {"dtype": "float64"}}


@pytest.mark.parametrize("loss", ["config", "callable"])
def test_one_full_batch_fedavg_round_is_one_least_squares_gradient_step(loss):
    """Full participation, one full-batch step, weights n_i/n, server lr 1: x₁ = x₀ − η ∇F(x₀)
    with F(θ) = (1/n) ‖Aθ − t‖², A = [X, 1] over every train row — in closed form (float64)."""
    cfg = load_config(_config(loss="mse") if loss == "config" else _config())
    sim = Simulation(cfg, loss=squared_error if loss == "callable" else None)
    assert sim.data.is_regression and sim.program.metrics == ()
    x0 = {k: v.clone() for k, v in sim.state.params.items()}
    sim.step()
    X, t = sim.data.x.numpy(), sim.data.y.numpy()
    A = np.c_[X, np.ones(len(X))]
    theta = np.r_[x0["linear.weight"].numpy().ravel(), x0["linear.bias"].numpy()]
    grad = 2.0 / len(t) * A.T @ (A @ theta - t)
    expected = theta - 0.3 * grad
    got = np.r_[sim.state.params["linear.weight"].numpy().ravel(),
                sim.state.params["linear.bias"].numpy()]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-13)
    row = sim.evaluate()
    resid = np.c_[sim.data.x_test.numpy(), np.ones(len(sim.data.x_test))] @ got \
        - sim.data.y_test.numpy()
    assert set(row) == {"test_loss", "train_loss"}
    assert row["test_loss"] == pytest.approx(np.mean(resid ** 2), rel=1e-12)


def _check_user_metrics(result, out_dir):
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    data = build_dataset(result.config["data"], seed=3)
    p = result.final_params
    pred = data.x_test.double() @ p["linear.weight"].T.cpu() + p["linear.bias"].cpu()
    err = pred.squeeze(-1) - data.y_test.double()
    assert rows[-1]["test_mae"] == pytest.approx(err.abs().mean().item(), rel=1e-9)
    assert rows[-1]["test_mse"] == pytest.approx(err.pow(2).mean().item(), rel=1e-9)
    assert rows[-1]["test_loss"] == pytest.approx(rows[-1]["test_mse"], rel=1e-12)
    assert "test_accuracy" not in rows[-1]


def test_a_user_metric_is_recorded_in_metrics_jsonl(tmp_path):
    cfg = _config(local_steps=3, batch_size=8)
    cfg["algorithm"]["clients_per_round"] = 3
    res = fedopt.run(cfg, out_dir=tmp_path / "run", progress=False, loss=squared_error,
                     metrics={"mae": mean_abs_error, "mse": "mse"})
    _check_user_metrics(res, tmp_path / "run")
    assert res.summary["final_test_accuracy"] is None


def test_loss_and_metric_keys_are_checked():
    with pytest.raises(ConfigError, match="client.loss"):
        load_config(_config(loss="hinge"))
    with pytest.raises(ConfigError, match="client.metrics"):
        load_config(_config(metrics=["top5"]))
    with pytest.raises(ValueError, match="metrics.top5"):
        Simulation(load_config(_config()), metrics=["top5"])
    cfg = load_config(_config(metrics=["mse"]))
    assert Simulation(cfg).program.metrics == (("mse", "mse"),)


def test_regression_data_set_is_keyed_by_the_seed():
    spec = {"name": "regression", "num_clients": 4, "num_targets": 2}
    a, b = build_dataset(spec, seed=1), build_dataset(spec, seed=1)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert a.y.dtype == torch.float32 and a.y.shape == (a.x.shape[0], 2) and a.num_classes == 2
    assert not torch.equal(a.y, build_dataset(spec, seed=2).y)
    with pytest.raises(ValueError, match="regression"):
        a.label_counts()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_user_loss_and_metric_run_on_ray_as_in_process(tmp_path, ray_session):
    from tests.server.ray_fixtures import TEST_CPUS_PER_WORKER, assert_metrics_close

    cfg = _config(local_steps=3, batch_size=8)
    cfg["algorithm"]["clients_per_round"] = 3
    # functions of a module the workers cannot import (tests/ is not on their path) must
    # travel by value: cloudpickle ships local functions, lambdas and __main__'s that way
    def loss(outputs, targets):
        return (outputs.squeeze(-1) - targets) ** 2

    def mae(outputs, targets):
        return (outputs.squeeze(-1) - targets).abs()

    kw = {"loss": loss, "metrics": {"mae": mae, "mse": "mse"}, "progress": False}
    local = fedopt.run(cfg, **kw)
    cfg["executor"].update({"name": "ray", "num_workers": 2, "num_threads": 1,
                            "num_cpus_per_worker": TEST_CPUS_PER_WORKER})
    remote = fedopt.run(cfg, out_dir=tmp_path / "ray", **kw)
    assert_metrics_close(local.metrics, remote.metrics)
    for k in local.final_params:
        torch.testing.assert_close(local.final_params[k], remote.final_params[k],
                                   rtol=0, atol=1e-12)
    _check_user_metrics(remote, tmp_path / "ray")
    # a metric the workers could not receive is refused before any worker starts
    import threading

    lock = threading.Lock()
    with pytest.raises(ValueError, match="metrics.locked: cannot be shipped"):
        fedopt.run(cfg, **{**kw, "metrics": {"locked": lambda o, t: o[:, 0] if lock else o}})


def test_float_targets_from_arrays_and_npz_are_regression(tmp_path):
    from fedopt.data import build_from_arrays, build_npz

    g = np.random.default_rng(0)
    x = g.normal(size=(60, 3)).astype(np.float32)
    t = x @ np.array([1.0, -2.0, 0.5]) + 0.1
    d = build_from_arrays(x, t, 4, "iid", seed=0)
    assert d.is_regression and d.num_classes == 1 and d.y.dtype == torch.float32
    t2 = np.c_[t, -t]
    d2 = build_from_arrays(x, t2, 4, "power_law", seed=0, x_test=x[:5], y_test=t2[:5])
    assert d2.y.shape[1:] == (2,) and d2.num_classes == 2 and d2.x_test.shape[0] == 5
    with pytest.raises(ConfigError, match="data.partition: 'dirichlet' splits by class"):
        build_from_arrays(x, t, 4, "dirichlet", seed=0)
    with pytest.raises(ConfigError, match="data.num_classes"):
        build_from_arrays(x, t, 4, "iid", seed=0, num_classes=3)
    # whole-number float labels stay class labels
    assert not build_from_arrays(x, (np.arange(60) % 3).astype(float), 4, "iid", seed=0).is_regression
    client = np.arange(60) % 4
    path = tmp_path / "reg.npz"
    np.savez(path, x_train=x[:50], y_train=t[:50], client_train=client[:50], x_test=x[50:],
             y_test=t[50:], client_test=client[50:])
    d3 = build_npz(path, seed=0)      # (float y_train with fractional values: regression)
    assert d3.is_regression and d3.num_clients == 4 and d3.y_test.shape == (10,)
    cfg = _config()
    cfg["data"] = {"name": "npz", "path": str(path)}
    cfg["algorithm"]["clients_per_round"] = 4
    # float targets found in a user's file are not made a regression run silently: a loss
    # must say so; a loss or metric that needs class labels is refused by name
    with pytest.raises(ConfigError, match=r"^client\.loss: the data set's targets are floats"):
        fedopt.run(cfg, progress=False)
    for key, value, name in (("loss", "cross_entropy", "cross_entropy"),
                             ("metrics", ["accuracy"], "accuracy")):
        bad = {**cfg, "client": {**cfg["client"], "loss": "mse", key: value}}
        with pytest.raises(ConfigError, match=rf"^client\.{key}: {name} needs class labels"):
            fedopt.run(bad, progress=False)
    cfg["client"]["loss"] = "mse"
    res = fedopt.run(cfg, progress=False, metrics={"mse": "mse"})
    assert res.metrics[-1]["test_loss"] == pytest.approx(res.metrics[-1]["test_mse"])
    labels = {**_config(loss="mse"), "data": {"name": "synthetic", "num_clients": 6}}
    with pytest.raises(ConfigError, match=r"^client\.loss: mse needs float regression targets"):
        fedopt.run(labels, progress=False)


def test_full_gradients_with_vector_targets_are_each_clients_least_squares_gradient():
    """SCAFFOLD option I's ∇F_i(x) on a regression set with 3 targets: for a linear model
    o = W a + b, F_i = mean_rows (1/3)‖o − t‖², so ∇_W F_i = (2/3) mean_rows (o − t) aᵀ and
    ∇_b F_i = (2/3) mean_rows (o − t) — computed here in closed form from client i's rows."""
    cfg = load_config({"data": {"name": "regression", "num_clients": 4, "num_targets": 3,
                                "test_fraction": 0.0},
                       "model": {"name": "logreg"}, "client": {"local_steps": 1, "loss": "mse"},
                       "algorithm": {"name": "scaffold", "option": "I", "rounds": 1,
                                     "clients_per_round": 2},
                       "executor": {"dtype": "float64"}})
    sim = Simulation(cfg)
    ids = np.array([2, 0])
    params = {k: torch.randn_like(v) for k, v in sim.state.params.items()}
    g = sim.executor.full_gradients(params, ids)
    (wk, W), (bk, b) = params.items()
    off = sim.data.offsets.tolist()
    for j, i in enumerate(ids):
        a, t = sim.data.x[off[i]:off[i + 1]], sim.data.y[off[i]:off[i + 1]]
        r = a @ W.T + b - t
        torch.testing.assert_close(g[wk][j], (2 / 3) * r.T @ a / len(a), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g[bk][j], (2 / 3) * r.mean(0), rtol=1e-10, atol=1e-12)


def test_validate_refuses_a_loss_or_metric_that_does_not_fit_the_targets(tmp_path):
    """What a run refuses (above), validate refuses with the same field, before any data is
    built: a loss/metric for class labels on the regression set, mse on class labels, and float
    targets in a user's npz file without a loss that confirms a regression run."""
    cases = [({"loss": "cross_entropy"}, {}, r"^client\.loss: cross_entropy needs class labels"),
             ({"loss": "mse", "metrics": ["accuracy"]}, {},
              r"^client\.metrics: accuracy needs class labels"),
             ({"loss": "mse"}, {"name": "synthetic", "num_clients": 6},
              r"^client\.loss: mse needs float regression targets")]
    for client, data, match in cases:
        cfg = _config(**client)
        cfg["data"] = data or cfg["data"]
        with pytest.raises(ConfigError, match=match):
            load_config(cfg)
    g = np.random.default_rng(1)
    x = g.normal(size=(40, 3)).astype(np.float32)
    np.savez(tmp_path / "reg.npz", x=x, y=(x @ np.array([1.0, 2.0, -1.0])).astype(np.float32))
    cfg = _config()
    cfg["data"] = {"name": "npz", "path": str(tmp_path / "reg.npz"), "num_clients": 4}
    cfg["algorithm"]["clients_per_round"] = 4
    with pytest.raises(ConfigError, match=r"^client\.loss: the data set's targets are floats"):
        load_config(cfg)
    cfg["client"]["loss"] = "mse"
    assert load_config(cfg)["client"]["loss"] == "mse"
