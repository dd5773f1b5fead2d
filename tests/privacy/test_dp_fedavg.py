"""DP-FedAvg: exact reduction to FedAvg, clipped contributions, the aggregate's noise std against
its calibration, epsilon_spent rows from the accountant, and the config's refusals."""
import copy
import math

import numpy as np
import pytest
import torch
import yaml
from scipy import stats

import fedopt
from fedopt.config import validate
from fedopt.engine.contract import SharedStart
from fedopt.privacy import accounting
from fedopt.privacy.dp_fedavg import DPFedAvg
from fedopt.schema import ConfigError
from fedopt.simulation import Simulation

BASE = {
    "seed": 3,
    "data": {"name": "synthetic", "alpha": 1.0, "beta": 1.0, "num_clients": 12},
    "model": {"name": "logreg"},
    "algorithm": {"name": "fedavg", "rounds": 4, "clients_per_round": 4,
                  "aggregation_weights": "uniform"},
    "client": {"local_steps": 3, "batch_size": 8, "optimizer": {"name": "sgd", "lr": 0.1}},
    "executor": {"name": "local", "dtype": "float64", "chunk_size": 3},
    "eval_every": 2,
}


def config(privacy=None, **alg):
    cfg = copy.deepcopy(BASE)
    cfg["algorithm"].update(alg)
    if privacy is not None:
        cfg["privacy"] = {"mechanism": "dp_fedavg", **privacy}
    return cfg


def test_no_noise_no_clipping_is_fedavg_bit_for_bit():
    plain = fedopt.run(config(), progress=False)
    # huge clip norm: every scale is exactly 1.0; epsilon .inf: no noise
    dp = fedopt.run(config({"epsilon": math.inf, "clip": 1e12}), progress=False)
    for k in plain.final_params:
        assert torch.equal(plain.final_params[k], dp.final_params[k])
    # and the wrapper without any clipping at all
    a, b = Simulation(validate(config())), Simulation(validate(config()))
    b.algorithm = DPFedAvg(b.algorithm, None, 0.0)
    a.run(), b.run()
    for k in a.state.params:
        assert torch.equal(a.state.params[k], b.state.params[k])
    assert all(r["epsilon_spent"] == math.inf for r in dp.metrics)


def test_clipping_bounds_every_contribution():
    sim = Simulation(validate(config({"noise_multiplier": 0.0, "clip": 0.05})))
    ids = np.arange(12)
    out = sim.executor.run_jobs(SharedStart(sim.state.params), ids, np.zeros(12, dtype=np.int64),
                                np.full(12, 1 / 12), keep_local=True)
    norms = sum((out.local_params[k] - sim.state.params[k]).pow(2).flatten(1).sum(1)
                for k in sim.state.params).sqrt()
    assert (norms <= 0.05 * (1 + 1e-12)).all()
    assert (norms > 0.05 * (1 - 1e-9)).sum() >= 6     # most local updates were longer


def one_round_noise(privacy):
    """Δx of one round with noise minus without (same clipped clients), over every coordinate."""
    clean = Simulation(validate(config({**privacy, "noise_multiplier": 0.0})))
    noisy = Simulation(validate(config(privacy)))
    clean.step(), noisy.step()
    return torch.cat([(noisy.state.params[k] - clean.state.params[k]).flatten()
                      for k in clean.state.params]).numpy(), noisy


@pytest.mark.parametrize("noise,per_layer", [("central", False), ("local", True)])
def test_aggregate_noise_std_matches_the_calibration(noise, per_layer):
    z, c, m = 1.7, 0.4, 4
    diff, sim = one_round_noise({"noise_multiplier": z, "clip": c, "noise": noise,
                                 "clip_per_layer": per_layer})
    assert sim.algorithm.aggregate_std == pytest.approx(z * c / m)
    # server sgd lr 1: x_1 − x_1^clean = σC/m · ν (central) or (1/m) Σ_i σC/√m ν_i (local)
    assert stats.kstest(diff / (z * c / m), "norm").pvalue > 0.01
    assert np.std(diff) == pytest.approx(z * c / m, rel=0.1)    # 610 coordinates


def test_epsilon_spent_rows_and_calibration():
    res = fedopt.run(config({"epsilon": 3.0, "clip": 1.0}, rounds=6), progress=False)
    cfg = res.config["privacy"]
    z, q = cfg["noise_multiplier"], 4 / 12
    assert z > 0 and cfg["accountant"] == "rdp" and cfg["noise"] == "central"
    for row in res.metrics:
        assert row["epsilon_spent"] == pytest.approx(
            accounting.epsilon(z, q, row["round"], 1e-5, "rdp"), rel=1e-9)
    assert res.metrics[-1]["epsilon_spent"] <= 3.0
    assert res.metrics[-1]["epsilon_spent"] == pytest.approx(3.0, rel=5e-3)


def test_validate_prints_the_resolved_noise_multiplier(tmp_path, capsys):
    from fedopt.simulations.cli import main
    path = tmp_path / "dp.yaml"
    path.write_text(yaml.safe_dump(config({"epsilon": 2.0, "clip": 1.0})))
    assert main(["validate", str(path)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    z = printed["privacy"]["noise_multiplier"]
    assert accounting.epsilon(z, 4 / 12, 4, 1e-5) == pytest.approx(2.0, rel=5e-3)


@pytest.mark.parametrize("change,field", [
    ({"privacy": {"noise_multiplier": 0.5, "epsilon": 1.0, "clip": 1.0}}, "algorithm.rounds"),
    ({"algorithm": {"aggregation_weights": "num_samples"}}, "algorithm.aggregation_weights"),
    ({"algorithm": {"name": "scaffold"}}, "privacy.mechanism"),
    ({"on_nonfinite": "drop"}, "on_nonfinite"),
    ({"privacy": {"clip": 1.0}}, "privacy.epsilon"),
    ({"privacy": {"epsilon": 1.0, "clip": 1.0, "clip_diff": 0.1}}, "privacy.clip_diff"),
    ({"privacy": {"epsilon": 1.0, "clip": -1.0}}, "privacy.clip"),
])
def test_config_refusals_name_the_field(change, field):
    cfg = config({"epsilon": 2.0, "clip": 1.0})
    for key, value in change.items():
        if key == "privacy":
            cfg["privacy"] = {"mechanism": "dp_fedavg", **value}
        elif isinstance(value, dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert str(e.value).startswith(field), str(e.value)


@pytest.mark.parametrize("name", ["dp_fedavg_synthetic.yaml", "diff2_digits.yaml"])
def test_shipped_privacy_configs_validate_with_a_calibrated_noise(name):
    from pathlib import Path

    from fedopt.config import load_config
    cfg = load_config(Path(__file__).parents[2] / "simulations" / "configs" / name)
    p = cfg["privacy"]
    assert p["noise_multiplier"] > 0
    if p["mechanism"] == "diff2":
        r1, r2 = accounting.diff2_rounds(cfg["algorithm"]["rounds"],
                                         cfg["algorithm"]["restart_period"])
        spent = accounting.epsilon_diff2(p["noise_multiplier"], r1, p["noise_multiplier_diff"],
                                         r2, p["delta"], p["accountant"])
    else:
        q = cfg["algorithm"]["clients_per_round"] / cfg["data"]["num_clients"]
        spent = accounting.epsilon(p["noise_multiplier"], q, cfg["algorithm"]["rounds"],
                                   p["delta"], p["accountant"])
    assert spent <= p["epsilon"] and spent == pytest.approx(p["epsilon"], rel=5e-3)


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    # fixed noise (a calibrated one depends on algorithm.rounds, which a resume may raise)
    cfg = config({"noise_multiplier": 1.2, "clip": 0.3, "noise": "local"}, rounds=5)
    cfg["checkpoint_every"] = 1
    full = fedopt.run(cfg, progress=False)
    short = copy.deepcopy(cfg)
    short["algorithm"]["rounds"] = 2
    fedopt.run(short, out_dir=tmp_path / "r", progress=False)
    resumed = fedopt.run(cfg, out_dir=tmp_path / "r", progress=False, resume=True)
    for k in full.final_params:
        assert torch.equal(full.final_params[k], resumed.final_params[k])
    assert resumed.metrics[-1]["epsilon_spent"] == full.metrics[-1]["epsilon_spent"]


def test_resume_refuses_a_noise_recalibrated_for_more_rounds(tmp_path):
    """With LEAF the clients (so q = m/N) are known only from the data: the noise is calibrated
    at run time and is not in the recorded config. A resume that raises algorithm.rounds would
    recalibrate it and count every round at the new noise; it is refused."""
    import json

    root = tmp_path / "leaf"
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        (root / split / "a.json").write_text(json.dumps(
            {"users": [f"u{i}" for i in range(6)],
             "user_data": {f"u{i}": {"x": [[0.1 * i] * 784] * 3, "y": [i, 1, 2]}
                           for i in range(6)}}))
    cfg = config({"epsilon": 4.0, "clip": 0.5}, rounds=2, clients_per_round=3)
    cfg["data"] = {"name": "leaf", "task": "femnist", "path": str(root)}
    cfg["checkpoint_every"] = 1
    first = fedopt.run(cfg, out_dir=tmp_path / "r", progress=False)
    z = first.config["privacy"]["noise_multiplier"]
    assert first.metrics[-1]["epsilon_spent"] == pytest.approx(
        accounting.epsilon(z, 3 / 6, 2, 1e-5), rel=1e-9)
    longer = copy.deepcopy(cfg)
    longer["algorithm"]["rounds"] = 4
    with pytest.raises(ConfigError, match=rf"privacy.noise_multiplier: rounds 1..2 of this run "
                                          rf"were noised with {z!r}, this config gives"):
        fedopt.run(longer, out_dir=tmp_path / "r", progress=False, resume=True)
