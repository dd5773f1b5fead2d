"""End to end through the config contract (`fedopt run` / fedopt.run): topology and algorithm
sections, metrics rows vs virtual time, f* against independent solvers, config errors."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import fedopt
from fedopt.config import validate
from fedopt.data import build_dataset
from fedopt.schema import ConfigError


def config(name, data=None, topology=None, l2=0.1, T=20, **alg):
    return {"seed": 1, "data": data or {"name": "regression", "num_clients": 6},
            "model": {"name": "logreg", "l2": l2},
            "algorithm": {"name": name, "time_budget": T, **alg},
            "topology": topology or {"name": "ring"}, "client": {"local_steps": 1},
            "executor": {"dtype": "float64"}, "eval_every": 5, "eval_train": False}


def ridge_optimum(cfg):
    """Closed-form minimizer of f = (1/n) Σ_i [(1/n_i) Σ_r (wᵀa_r + b − t_r)² + (λ/2)‖(w, b)‖²]
    from the normal equations (numpy float64)."""
    data = build_dataset(cfg["data"], seed=cfg["seed"])
    x, y = data.x.double().numpy(), data.y.double().numpy()
    counts = data.counts.numpy()
    wts = np.repeat(1.0 / (len(counts) * counts), counts)
    a = np.hstack([x, np.ones((len(x), 1))])
    lam = cfg["model"]["l2"]
    h = 2 * (a * wts[:, None]).T @ a + lam * np.eye(a.shape[1])
    theta = np.linalg.solve(h, 2 * (a * wts[:, None]).T @ y)
    r = a @ theta - y
    return float((wts * r ** 2).sum() + 0.5 * lam * theta @ theta)


def test_dadao_run_reaches_ridge_optimum():
    cfg = config("dadao", T=260, topology={"name": "complete"})
    cfg["eval_every"] = 20
    res = fedopt.run(cfg, progress=False)
    rows = res.metrics
    assert [r["virtual_time"] for r in rows] == [float(t) for t in range(20, 261, 20)]
    last = rows[-1]
    for key in ("gradient_steps", "communications", "consensus_error", "suboptimality",
                "test_loss", "distance_to_opt"):
        assert key in last
    assert last["gradient_steps"] == pytest.approx(6 * 260, rel=0.1)        # n per time unit
    lam = (6 - 1) / np.sqrt(2)                                               # K_6's rate
    assert last["communications"] == pytest.approx(lam * 260, rel=0.1)
    assert 0 <= last["suboptimality"] < 1e-6
    # f(x̄) − f* with f* from the closed form agrees with the row's (Newton) suboptimality
    f_star = ridge_optimum(cfg)
    x = {k: v.double() for k, v in res.final_params.items()}
    subs = [r["suboptimality"] for r in rows]
    assert subs[-1] < 1e-4 * subs[0]
    data = build_dataset(cfg["data"], seed=cfg["seed"])
    counts = data.counts.numpy()
    wts = torch.as_tensor(np.repeat(1.0 / (6 * counts), counts))
    pred = data.x.double() @ x["linear.weight"].T.squeeze(-1) + x["linear.bias"]
    f_xbar = float((wts * (pred - data.y.double()) ** 2).sum()
                   + 0.05 * sum(float(v.pow(2).sum()) for v in x.values()))
    assert f_xbar - f_star == pytest.approx(last["suboptimality"], abs=1e-9)


@pytest.mark.parametrize("name,extra", [("gossip", {"lr": 0.05}), ("dsgd", {"lr": 0.05}),
                                        ("adom_plus", {"multi_consensus": True}),
                                        ("srrw", {"alpha": 2.0, "lr": 0.5})])
def test_baselines_run_on_classification(name, extra):
    data = {"name": "synthetic", "alpha": 0.5, "beta": 0.5, "num_clients": 8,
            "min_samples": 20}
    cfg = config(name, data=data, topology={"name": "torus", "rows": 2, "cols": 4}, l2=0.05,
                 T=10, **extra)
    res = fedopt.run(cfg, progress=False)
    rows = res.metrics
    assert [r["virtual_time"] for r in rows] == [5.0, 10.0]
    assert all(r["suboptimality"] >= -1e-9 for r in rows)
    assert rows[-1]["suboptimality"] < rows[0]["suboptimality"] + 1e-12 or name in ("gossip",
                                                                                  "srrw")
    assert "test_accuracy" in rows[-1]
    if name == "dsgd":
        # 2 x 4 torus: two 4-cycles and 4 vertical edges (wrap-around of 2 rows coincides)
        assert rows[-1]["gradient_steps"] == 80 and rows[-1]["communications"] == 10 * 12
    if name == "adom_plus":   # Q = ⌈χ ln 2⌉ gossip steps a round, χ = λ_max/λ₂ = 6/2 (C4 x K2)
        assert rows[-1]["communications"] == 10 * 12 * math.ceil(3 * math.log(2))
    if name == "srrw":        # one token: N hops a time unit, one gradient and one hop each
        assert rows[-1]["gradient_steps"] == rows[-1]["communications"] == 80
        assert rows[-1]["consensus_error"] < 1e-25   # every node sees the token's θ


def test_logistic_optimum_is_stationary():
    """The Newton f*: the gradient of f at x* — by autograd on the plain module over the
    pooled rows, weights 1/(n n_i) — vanishes."""
    from fedopt.decentralized.engine import NodeAlgorithm
    data_cfg = {"name": "synthetic", "alpha": 0.5, "beta": 0.5, "num_clients": 5,
                "min_samples": 20}
    cfg = config("gossip", data=data_cfg, l2=0.02, T=1, lr=0.0)
    from fedopt.simulation import Simulation
    sim = Simulation(validate(cfg))
    d = sim.state.extra["decentralized"]
    obj = sim.algorithm.objective
    xs = obj.unflatten(d["x_star"].unsqueeze(0))
    model = sim.model.double()
    params = {k: v[0].clone().requires_grad_(True) for k, v in xs.items()}
    out = torch.func.functional_call(model, params, (sim.data.x.double(),))
    counts = sim.data.counts.numpy()
    wts = torch.as_tensor(np.repeat(1.0 / (5 * counts), counts))
    f = (torch.nn.functional.cross_entropy(out, sim.data.y, reduction="none") * wts).sum() \
        + 0.01 * sum(p.pow(2).sum() for p in params.values())
    grads = torch.autograd.grad(f, list(params.values()))
    assert max(float(g.abs().max()) for g in grads) < 1e-10
    assert float(f.detach()) == pytest.approx(d["f_star"], abs=1e-12)
    sim.close()
    assert isinstance(sim.algorithm, NodeAlgorithm)


def test_config_errors_name_the_field():
    assert validate(config("dadao", T=7.5))["algorithm"]["rounds"] == 8   # one per time unit
    with pytest.raises(ConfigError, match=r"^topology: .*disconnected"):
        validate(config("gossip", topology={"name": "edges", "edges": [[0, 1], [2, 3],
                                                                       [3, 4], [4, 5]]}))
    with pytest.raises(ConfigError, match=r"^topology: required"):
        c = config("dsgd")
        del c["topology"]
        validate(c)
    with pytest.raises(ConfigError, match=r"^algorithm.comm_rate: .*below"):
        validate(config("dadao", comm_rate=0.5))
    with pytest.raises(ConfigError, match=r"^topology: read only by the decentralized"):
        validate({**config("gossip"), "algorithm": {"name": "fedavg", "rounds": 2,
                                                    "clients_per_round": 2}})
    with pytest.raises(ConfigError, match=r"^topology.rows: rows x cols"):
        validate(config("gossip", topology={"name": "grid", "rows": 4}))
    with pytest.raises(ConfigError, match=r"^executor.name: dsgd runs on the in-process"):
        validate({**config("dsgd"), "executor": {"name": "ray"}})     # gossip/dadao: node actors
    with pytest.raises(ConfigError, match=r"^clock: not read by gossip"):
        validate({**config("gossip"), "clock": {"compute": {"name": "exponential"}}})
    with pytest.raises(ConfigError, match=r"^topology.p"):
        validate(config("gossip", topology={"name": "erdos_renyi", "p": 0}))


def test_cli_run_writes_decentralized_rows(tmp_path):
    cfg = config("gossip", T=4, lr=0.05)
    cfg["eval_every"] = 2
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg))
    out = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "fedopt.simulations.cli", "run", str(path), "--out", str(out)],
                   check=True, capture_output=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["virtual_time"] for r in rows] == [2.0, 4.0]
    assert all("communications" in r and "suboptimality" in r for r in rows)


@pytest.mark.parametrize("name", ["dadao", "gossip"])
def test_resume_from_checkpoint_reproduces_the_run(name):
    from fedopt.simulation import Simulation
    cfg = validate(config(name, T=7.5, topology={"name": "star"}))
    full = Simulation(cfg)
    full.run()
    part = Simulation(cfg)
    for _ in range(3):
        part.step()
    ckpt = part.checkpoint()
    part.close()
    resumed = Simulation(cfg)
    resumed.restore(ckpt)
    resumed.run()
    assert resumed.state.extra["decentralized"]["time"] == 7.5
    for k, v in full.state.params.items():
        assert torch.equal(v, resumed.state.params[k])
    for a, b in (("gradient_steps", "gradient_steps"), ("communications", "communications")):
        assert full.state.extra["decentralized"][a] == resumed.state.extra["decentralized"][b]
    full.close()
    resumed.close()


def test_plot_draws_suboptimality_against_time_gradients_and_communications(tmp_path):
    from fedopt.simulations.plot import plot_run, plot_runs
    dirs = []
    for name in ("dadao", "gossip"):
        out = tmp_path / name
        fedopt.run(config(name, T=4, **({"lr": 0.05} if name == "gossip" else {})),
                   out_dir=str(out), progress=False)
        dirs.append(out)
    written = {p.rsplit("/", 1)[1] for p in plot_run(dirs[0])}
    for x in ("virtual_time", "gradient_steps", "communications"):
        assert f"suboptimality_vs_{x}.png" in written
    both = {p.rsplit("/", 1)[1] for p in plot_runs(dirs, x="communications",
                                                   out=tmp_path / "cmp")}
    assert "suboptimality_vs_communications.png" in both


def test_any_built_in_model_runs_without_a_known_optimum():
    cfg = config("gossip", data={"name": "synthetic", "num_clients": 6, "min_samples": 20,
                                 "max_samples": 40}, T=2, lr=0.05)
    cfg["model"] = {"name": "mlp", "hidden": [8]}
    rows = fedopt.run(cfg, progress=False).metrics
    assert "test_accuracy" in rows[-1] and "suboptimality" not in rows[-1]
    assert rows[-1]["consensus_error"] > 0
    cfg["algorithm"] = {"name": "dadao", "time_budget": 2}
    with pytest.raises(ConfigError, match=r"^algorithm.L: .*give algorithm.L and algorithm.mu"):
        fedopt.run(cfg, progress=False)


def test_resume_with_a_longer_budget_through_the_run_directory(tmp_path):
    cfg = config("dadao", T=6, topology={"name": "ring"})
    cfg.update(eval_every=1, checkpoint_every=2)
    full = fedopt.run(cfg, progress=False)
    short = {**cfg, "algorithm": {**cfg["algorithm"], "time_budget": 4}}
    fedopt.run(short, out_dir=str(tmp_path / "r"), progress=False)
    res = fedopt.run(cfg, out_dir=str(tmp_path / "r"), resume=True, progress=False)
    assert [r["virtual_time"] for r in res.metrics] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    for k, v in full.final_params.items():
        assert torch.equal(v, res.final_params[k])
