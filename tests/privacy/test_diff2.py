"""DIFF2-GD against a direct per-record implementation (closed-form softmax-regression gradients,
no autograd), its exact reduction to GD without noise or clipping, the noise std of a message,
and the config's refusals."""
import copy
import math

import numpy as np
import pytest
import torch
from scipy import stats

from fedopt.config import validate
from fedopt.engine.contract import SharedStart
from fedopt.privacy import accounting
from fedopt.privacy.diff2 import pair_start
from fedopt.privacy.postprocess import keyed_gaussian
from fedopt.rng import STREAM_DP_DIFF2
from fedopt.schema import ConfigError
from fedopt.simulation import Simulation

P = 4
BASE = {
    "seed": 5,
    "data": {"name": "synthetic", "alpha": 1.0, "beta": 1.0, "num_clients": P},
    "model": {"name": "logreg"},
    "algorithm": {"name": "diff2", "rounds": 6, "clients_per_round": P, "restart_period": 3,
                  "aggregation_weights": "uniform", "server_optimizer": {"lr": 0.5}},
    "client": {"local_steps": 1, "batch_size": 100000},
    "executor": {"name": "local", "dtype": "float64", "chunk_size": 3},
    "eval_every": 3,
}


def config(privacy=None, **alg):
    cfg = copy.deepcopy(BASE)
    cfg["algorithm"].update(alg)
    cfg["privacy"] = {"mechanism": "diff2", "epsilon": math.inf, "clip": 1e12,
                      "clip_diff": 1e12, **(privacy or {})}
    return cfg


def record_grads(W, b, x, y):
    """Per-record ∇ of the cross-entropy of softmax(Wx + b) (closed form): ((p − e_y) xᵀ, p − e_y)."""
    p = torch.softmax(x @ W.T + b, dim=1)
    p[torch.arange(len(y)), y] -= 1.0
    return torch.einsum("nk,nd->nkd", p, x), p


def clip(gW, gb, c):
    if c is None:
        return gW, gb
    n = (gW.flatten(1).pow(2).sum(1) + gb.pow(2).sum(1)).sqrt()
    s = (c / n).clamp(max=1.0)
    return gW * s[:, None, None], gb * s[:, None]


def reference(sim, rounds, T, eta, c1, c2, z1, z2, seed):
    """DIFF2-GD of the spec (seed_extras.md §6.1), record by record, w_p = 1/P."""
    d = sim.data
    W, b = sim.state.params["linear.weight"].clone(), sim.state.params["linear.bias"].clone()
    Wp, bp, v = W.clone(), b.clone(), None
    for r in range(rounds):
        uW, ub = torch.zeros_like(W), torch.zeros_like(b)
        for p in range(P):
            lo, hi = int(d.offsets[p]), int(d.offsets[p + 1])
            x, y = d.x[lo:hi].flatten(1), d.y[lo:hi]
            gW, gb = record_grads(W, b, x, y)
            if r % T == 0:
                (tW, tb), c, z = clip(gW, gb, c1), c1, z1
            else:
                hW, hb = record_grads(Wp, bp, x, y)
                (tW, tb), c, z = clip(gW - hW, gb - hb, c2), c2, z2
            sW, sb = tW.sum(0), tb.sum(0)
            if z > 0:
                nu = keyed_gaussian(seed, STREAM_DP_DIFF2, np.array([r]), np.array([p]),
                                    {"w": sW[None], "b": sb[None]})
                sW, sb = sW + z * c * nu["w"][0], sb + z * c * nu["b"][0]
            uW += sW / (hi - lo) / P
            ub += sb / (hi - lo) / P
        v = (uW, ub) if r % T == 0 else (v[0] + uW, v[1] + ub)
        Wp, bp = W, b
        W, b = W - eta * v[0], b - eta * v[1]
    return W, b


@pytest.mark.parametrize("T", [1, 3])
def test_matches_the_per_record_reference_with_clipping_and_noise(T):
    c1, c2, z1, z2 = 0.5, 0.05, 1.3, 2.1
    sim = Simulation(validate(config({"epsilon": None, "noise_multiplier": z1,
                                      "noise_multiplier_diff": z2, "clip": c1,
                                      "clip_diff": c2}, restart_period=T)))
    W, b = reference(sim, 6, T, 0.5, c1, c2, z1, z2, seed=5)
    sim.run()
    assert torch.allclose(sim.state.params["linear.weight"], W, rtol=0, atol=1e-12)
    assert torch.allclose(sim.state.params["linear.bias"], b, rtol=0, atol=1e-12)


def test_no_noise_no_clipping_is_gradient_descent():
    """With z = 0 and C = ∞ the differences telescope: v_r = ∇F(x_r), DIFF2 == GD."""
    rounds, eta = 50, 0.5
    sim = Simulation(validate(config(rounds=rounds, restart_period=10)))
    ids = np.arange(P)
    x = {k: v.clone() for k, v in sim.state.params.items()}
    for _ in range(rounds):
        g = sim.executor.full_gradients(x, ids)
        x = {k: x[k] - eta * g[k].mean(0) for k in x}
    sim.run()
    for k in x:
        assert torch.allclose(sim.state.params[k], x[k], rtol=0, atol=1e-10)


def test_message_noise_std_is_z_c_over_n():
    """A restart message minus its noiseless value is z·C1·ν/n_p: KS test on every coordinate."""
    z, c = 0.8, 0.3
    noisy = Simulation(validate(config({"epsilon": None, "noise_multiplier": z,
                                        "noise_multiplier_diff": z, "clip": c,
                                        "clip_diff": c})))
    clean = Simulation(validate(config({"clip": c, "clip_diff": c})))
    ids, n = np.arange(P), noisy.data.counts.numpy()
    start = SharedStart(pair_start(noisy.state.params, noisy.state.params))
    outs = [s.executor.run_jobs(start, ids, np.zeros(P, dtype=np.int64), np.ones(P),
                                optimizer=s.algorithm.client_optimizer, keep_local=True)
            for s in (noisy, clean)]
    for p in range(P):
        diff = torch.cat([(outs[0].local_params[k][p] - outs[1].local_params[k][p]).flatten()
                          for k in noisy.state.params]).numpy()
        scaled = -diff * n[p] / (z * c)          # Δ = −u_p
        assert stats.kstest(scaled, "norm").pvalue > 0.01


def test_epsilon_spent_reaches_the_calibrated_budget():
    sim = Simulation(validate(config({"epsilon": 2.0, "clip": 1.0, "clip_diff": 0.1},
                                     rounds=6, restart_period=3)))
    p = sim.config["privacy"]
    noise = accounting.calibrate_diff2(2.0, 1e-5, 6, 3, 0.5, "rdp")
    assert (p["noise_multiplier"], p["noise_multiplier_diff"]) == (noise.z1, noise.z2)
    rows = sim.run()
    for row in rows:
        r1, r2 = accounting.diff2_rounds(row["round"], 3)
        assert row["epsilon_spent"] == pytest.approx(
            accounting.epsilon_diff2(noise.z1, r1, noise.z2, r2, 1e-5, "rdp"), rel=1e-9)
    assert rows[-1]["epsilon_spent"] <= 2.0
    assert rows[-1]["epsilon_spent"] == pytest.approx(2.0, rel=5e-3)


@pytest.mark.parametrize("change,field", [
    ({"algorithm": {"clients_per_round": 2}}, "algorithm.clients_per_round"),
    ({"client": {"local_steps": 2}}, "client.local_steps"),
    ({"client": {"batch_size": 5}}, "client.batch_size"),
    ({"privacy": {"mechanism": "dp_fedavg", "clip_diff": None}}, "privacy.mechanism"),
    ({"privacy": {"clip_diff": None}}, "privacy.clip_diff"),
    ({"privacy": {"noise": "central"}}, "privacy.noise"),
    ({"privacy": {"epsilon": 0.5, "noise_multiplier": 1.0, "noise_multiplier_diff": 1.0}},
     "algorithm.rounds"),
])
def test_config_refusals_name_the_field(change, field):
    cfg = config({"epsilon": 2.0, "clip": 1.0, "clip_diff": 0.1})
    for key, value in change.items():
        cfg[key].update(value)
    with pytest.raises(ConfigError) as e:
        Simulation(validate(cfg))
    assert str(e.value).startswith(field), str(e.value)


def test_no_privacy_section_is_refused():
    cfg = config()
    del cfg["privacy"]
    with pytest.raises(ConfigError, match="^privacy"):
        validate(cfg)


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    import fedopt
    # fixed noise (a calibrated one depends on algorithm.rounds, which a resume may raise)
    cfg = config({"epsilon": None, "noise_multiplier": 1.5, "noise_multiplier_diff": 2.5,
                  "clip": 0.5, "clip_diff": 0.05}, rounds=5)
    cfg["checkpoint_every"] = 1
    full = fedopt.run(cfg, progress=False)
    short = copy.deepcopy(cfg)
    short["algorithm"]["rounds"] = 2
    fedopt.run(short, out_dir=tmp_path / "r", progress=False)
    resumed = fedopt.run(cfg, out_dir=tmp_path / "r", progress=False, resume=True)
    for k in full.final_params:
        assert torch.equal(full.final_params[k], resumed.final_params[k])


def test_per_record_gradients_are_held_a_slice_at_a_time(monkeypatch):
    """A client's n records never stand as n model-sized rows at once: with room for 7
    records per slice the batched gradient sees at most 7 rows, and the run still equals the
    per-record reference (clipping and noise included)."""
    from fedopt.engine.local import LocalTrainer
    from fedopt.privacy import diff2 as message

    c1, c2, z1, z2 = 0.5, 0.05, 1.3, 2.1
    sim = Simulation(validate(config({"epsilon": None, "noise_multiplier": z1,
                                      "noise_multiplier_diff": z2, "clip": c1,
                                      "clip_diff": c2}, rounds=4)))
    size = sum(v.numel() for v in sim.state.params.values())
    monkeypatch.setattr(message, "RECORD_ELEMENTS", 7 * size)
    seen = []
    real = LocalTrainer.batched_grad

    def counted(self, y, batch):
        seen.append(batch.w.shape[0])
        return real(self, y, batch)
    monkeypatch.setattr(LocalTrainer, "batched_grad", counted)
    W, b = reference(sim, 4, 3, 0.5, c1, c2, z1, z2, seed=5)
    sim.run()
    assert seen and max(seen) == 7 and min(sim.data.counts.tolist()) > 7
    assert torch.allclose(sim.state.params["linear.weight"], W, rtol=0, atol=1e-12)
    assert torch.allclose(sim.state.params["linear.bias"], b, rtol=0, atol=1e-12)


def test_noise_is_calibrated_by_validate_when_the_clients_are_known_only_later(tmp_path):
    """LEAF's clients are known only once its files are parsed; DIFF2's calibration does not
    need them (q = 1), so validate (and the recorded config) carries z1, z2 all the same."""
    import json

    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        (tmp_path / split / "a.json").write_text(json.dumps(
            {"users": ["u", "v"], "user_data": {k: {"x": [[0.5] * 784] * 3, "y": [1, 2, 3]}
                                                for k in ("u", "v")}}))
    cfg = config({"epsilon": 2.0, "clip": 1.0, "clip_diff": 0.1}, clients_per_round=2)
    cfg["data"] = {"name": "leaf", "task": "femnist", "path": str(tmp_path)}
    p = validate(cfg)["privacy"]
    noise = accounting.calibrate_diff2(2.0, 1e-5, 6, 3, 0.5, "rdp")
    assert (p["noise_multiplier"], p["noise_multiplier_diff"]) == (noise.z1, noise.z2)
