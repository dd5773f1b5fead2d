"""Gradient-coded training (fedopt.algorithms.gradient_coding) against independent oracles:
exact codes give full-gradient training (a plain torch loop with torch.optim) whatever the
straggler pattern; virtual time has a closed form on a deterministic clock; the decode rules
use the arrivals the codes need; config errors name the field."""
import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.func import functional_call

from fedopt.config import ConfigError, load_config
from fedopt.simulation import Simulation

CLOCKS = {
    "exponential": {"compute": {"name": "exponential", "shift": 0.2, "scale": 1.0}},
    "pareto_slow_cohort": {"compute": {"name": "pareto", "scale": 0.5, "shape": 1.5},
                           "speed": {"name": "linear", "spread": 80}},
}


def config(algorithm, clock=None, optimizer=None, num_clients=12, dtype="float64"):
    return {"seed": 3, "data": {"name": "synthetic", "alpha": 1.0, "beta": 1.0,
                                "num_clients": num_clients, "max_samples": 60},
            "model": {"name": "logreg"},
            "algorithm": {"name": "gradient_coding", **algorithm},
            "client": {"local_steps": 1, "optimizer": optimizer or {"name": "sgd", "lr": 0.5}},
            "clock": clock or {}, "executor": {"name": "local", "device": "cpu", "dtype": dtype},
            "eval_every": 1000}


def reference_trajectory(sim, steps, make_opt):
    """Full-batch gradient descent on the mean loss over every training row (torch.optim)."""
    params = {k: v.detach().clone().requires_grad_(True) for k, v in sim.state.params.items()}
    opt = make_opt(list(params.values()))
    x, y = sim.data.x, sim.data.y
    out = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(functional_call(sim.model, params, (x,)), y)
        loss.backward()
        opt.step()
        out.append({k: v.detach().clone() for k, v in params.items()})
    return out


@pytest.mark.parametrize("code,s,clock", [("cyclic", 2, "exponential"),
                                          ("frc", 2, "pareto_slow_cohort"),
                                          ("cyclic", 3, "pareto_slow_cohort"),
                                          ("uncoded", 0, "exponential")])
@pytest.mark.parametrize("opt", ["sgd_momentum", "adam"])
def test_coded_training_equals_full_gradient_training(code, s, clock, opt):
    steps = 50
    spec, make = {
        "sgd_momentum": ({"name": "sgd", "lr": 0.5, "momentum": 0.9},
                         lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9)),
        "adam": ({"name": "adam", "lr": 0.05}, lambda p: torch.optim.Adam(p, lr=0.05)),
    }[opt]
    sim = Simulation(load_config(config({"code": code, "num_workers": 6, "stragglers": s,
                                         "rounds": steps}, CLOCKS[clock], spec)))
    ref = reference_trajectory(sim, steps, make)
    waited = set()
    for t in range(steps):
        stats = sim.step()
        waited.add(stats["waited_for"])
        for k, v in sim.state.params.items():
            rel = (v - ref[t][k]).norm() / ref[t][k].norm()
            assert rel < 1e-8, (t, k, float(rel))
        assert stats["decoded"] == t + 1
    if code != "uncoded":                 # the pattern did vary (FRC: early decodes)
        assert min(waited) < 6
    sim.close()


def test_virtual_time_closed_form_and_frc_early_decode():
    # constant compute 1, speeds 1..6 (worker i ×(i+1)): a worker's time = load · (i + 1)
    clock = {"compute": {"name": "constant", "value": 1.0},
             "speed": {"name": "list", "values": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]}}
    sim = Simulation(load_config(config({"code": "cyclic", "num_workers": 6, "stragglers": 2,
                                         "rounds": 3}, clock)))
    stats = [sim.step() for _ in range(3)]
    # cyclic: the 4th arrival (worker 3, speed 4) at load s + 1 = 3 -> 12 per iteration
    assert [st["virtual_time"] for st in stats] == pytest.approx([12.0, 24.0, 36.0])
    assert {st["waited_for"] for st in stats} == {4}
    sim.close()
    # FRC groups {0,1,2}, {3,4,5}: decodes at worker 3's arrival (load 3, speed 4): 12 with 2
    # arrivals — fewer than n − s = 4
    sim = Simulation(load_config(config({"code": "frc", "num_workers": 6, "stragglers": 2,
                                         "rounds": 2}, clock)))
    st = sim.step()
    assert st["waited_for"] == 4 and st["virtual_time"] == pytest.approx(12.0)
    sim.close()
    clock["speed"]["values"] = [1.0, 6.0, 6.0, 2.0, 6.0, 6.0]
    sim = Simulation(load_config(config({"code": "frc", "num_workers": 6, "stragglers": 2,
                                         "rounds": 2}, clock)))
    st = sim.step()
    assert st["waited_for"] == 2 and st["virtual_time"] == pytest.approx(6.0)
    # uncoded waits for the slowest at load 1
    sim.close()
    sim = Simulation(load_config(config({"code": "uncoded", "num_workers": 6, "rounds": 1},
                                        clock)))
    assert sim.step()["virtual_time"] == pytest.approx(6.0)
    sim.close()


def test_ignore_stragglers_is_biased_with_a_persistent_straggler():
    clock = {"compute": {"name": "constant", "value": 1.0},
             "speed": {"name": "list", "values": [1.0, 1.0, 1.0, 1.0, 1.0, 9.0]}}
    sim = Simulation(load_config(config({"code": "ignore_stragglers", "num_workers": 6,
                                         "stragglers": 1, "rounds": 3, "decode_error": True},
                                        clock)))
    ref = Simulation(load_config(config({"code": "uncoded", "num_workers": 6, "rounds": 3,
                                         "decode_error": True}, clock)))
    st, st_ref = sim.step(), ref.step()
    assert st["waited_for"] == 5 and st["decoded"] == 0 and st["decode_error"] > 1e-3
    assert st_ref["decode_error"] < 1e-12 and st_ref["decoded"] == 1
    # the estimate is (n / |F|) Σ_{i∈F} g_i over the 5 fast workers
    finish = np.array([1.0, 1, 1, 1, 1, 9])
    a, m = sim.algorithm.decoder(np.argsort(finish, kind="stable"), finish)
    np.testing.assert_array_equal(a, [1.2, 1.2, 1.2, 1.2, 1.2, 0.0])
    sim.close()
    ref.close()


def test_approximate_decoder_residual_and_partial_decode():
    clock = {"compute": {"name": "exponential", "shift": 0.2, "scale": 1.0}}
    sim = Simulation(load_config(config({"code": "approximate", "num_workers": 6,
                                         "stragglers": 2, "wait_for": 3, "rounds": 4,
                                         "decode_error": True}, clock)))
    for _ in range(4):
        st = sim.step()
        assert st["waited_for"] == 3 and st["reconstruction_error"] > 1e-6
        assert 0 < st["decode_error"]
    assert st["decoded"] == 0
    sim.close()
    sim = Simulation(load_config(config({"code": "approximate", "num_workers": 6,
                                         "stragglers": 2, "rounds": 2, "decode_error": True},
                                        clock)))
    st = sim.step()                      # wait_for defaults to n − s: exact
    assert st["decoded"] == 1 and st["decode_error"] < 1e-10
    sim.close()


@pytest.mark.parametrize("algorithm,field", [
    ({"code": "frc", "num_workers": 6, "stragglers": 3}, "algorithm.stragglers"),
    ({"code": "cyclic", "num_workers": 20}, "algorithm.num_workers"),
    ({"code": "cyclic", "num_workers": 6, "stragglers": 6}, "algorithm.stragglers"),
    ({"code": "uncoded", "num_workers": 6, "stragglers": 1}, "algorithm.stragglers"),
    ({"code": "cyclic", "num_workers": 6, "wait_for": 3}, "algorithm.wait_for"),
    ({"code": "approximate", "num_workers": 6, "wait_for": 7}, "algorithm.wait_for"),
    ({"code": "lt", "num_workers": 6}, "algorithm.code"),
])
def test_config_errors_name_the_field(algorithm, field):
    with pytest.raises(ConfigError, match=rf"^{field}"):
        load_config(config({**algorithm, "rounds": 1}))


def test_fedopt_run_end_to_end_and_resume(tmp_path):
    cfg = config({"code": "cyclic", "num_workers": 6, "stragglers": 2, "rounds": 6,
                  "decode_error": True}, CLOCKS["exponential"])
    cfg["eval_every"] = 3
    cfg["checkpoint_every"] = 3
    path = tmp_path / "gc.json"
    path.write_text(json.dumps(cfg))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fedopt.simulations.cli", "run", str(path), "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [3, 6]
    for r in rows:
        assert r["decoded"] == r["round"] and r["worker_load"] == 3
        assert r["decode_error"] < 1e-10 and r["virtual_time"] > 0
        assert r["test_accuracy"] is not None
    assert rows[1]["virtual_time"] > rows[0]["virtual_time"]
    # resume from round 3 reproduces the uninterrupted run exactly
    resumed = tmp_path / "resumed"
    cfg3 = dict(cfg, algorithm=dict(cfg["algorithm"], rounds=3))
    path.write_text(json.dumps(cfg3))
    subprocess.run([sys.executable, "-m", "fedopt.simulations.cli", "run", str(path), "--out",
                    str(resumed)], check=True, capture_output=True)
    path.write_text(json.dumps(cfg))
    subprocess.run([sys.executable, "-m", "fedopt.simulations.cli", "run", str(path), "--out",
                    str(resumed), "--resume"], check=True, capture_output=True)
    rows2 = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(rows, rows2):
        for k in ("virtual_time", "test_loss", "decoded"):
            assert a[k] == b[k], k


def test_minibatch_partition_gradients_decode_exactly():
    """minibatch: coded training equals uncoded training on the same minibatches (exact
    decoding), differs from full-batch training, and equals it when the batch holds every row."""
    clock = CLOCKS["pareto_slow_cohort"]

    def run(code, s, minibatch, batch):
        cfg = config({"code": code, "num_workers": 6, "stragglers": s, "rounds": 8,
                      "minibatch": minibatch}, clock)
        cfg["client"]["batch_size"] = batch
        sim = Simulation(load_config(cfg))
        for _ in range(8):
            sim.step()
        sim.close()
        return sim.state.params

    coded, plain = run("cyclic", 2, True, 5), run("uncoded", 0, True, 5)
    full = run("uncoded", 0, False, 5)
    for k in coded:
        assert (coded[k] - plain[k]).norm() / plain[k].norm() < 1e-10
        assert (coded[k] - full[k]).norm() / full[k].norm() > 1e-3
    whole = run("frc", 2, True, 1000)
    for k in whole:
        assert (whole[k] - full[k]).norm() / full[k].norm() < 1e-10
    with pytest.raises(ConfigError, match="^client.local_steps"):
        cfg = config({"code": "cyclic", "num_workers": 6, "rounds": 1, "minibatch": True})
        cfg["client"]["local_steps"] = 2
        load_config(cfg)


@pytest.mark.parametrize("code,B,W,lam", [("sr_sgc", 1, 2, 2), ("sr_sgc", 2, 3, 3),
                                          ("m_sgc", 1, 3, 2), ("m_sgc", 2, 3, 6)])
def test_sequential_codes_train_replicas_exactly(code, B, W, lam):
    """SR-SGC / M-SGC in config: the T + 1 pipelined replicas each follow full-gradient training
    (torch.optim, float64) whatever stragglers the bursty clock causes."""
    J = 9
    clock = {"compute": {"name": "markov", "p_good_to_bad": 0.25, "p_bad_to_good": 0.5}}
    cfg = config({"code": code, "num_workers": 6, "burst": B, "window": W, "lam": lam,
                  "rounds": J}, clock, {"name": "sgd", "lr": 0.5, "momentum": 0.5},
                 num_clients=40)
    sim = Simulation(load_config(cfg))
    M = sim.algorithm.M
    ref = reference_trajectory(sim, -(-J // M), lambda p: torch.optim.SGD(p, lr=0.5,
                                                                          momentum=0.5))
    for _ in range(J):
        stats = sim.step()
    assert stats["decoded"] == J
    replicas = sim.state.extra["sgc"]["replicas"]
    for m in range(M):
        u = len(range(m, J, M))
        for k, v in replicas[m].items():
            assert (v - ref[u - 1][k]).norm() / ref[u - 1][k].norm() < 1e-8, (m, k)
    assert stats["stragglers"] > 0          # the clock did erase results, absorbed by the code
    sim.close()


def test_sequential_config_errors():
    with pytest.raises(ConfigError, match="^algorithm.burst"):
        load_config(config({"code": "sr_sgc", "num_workers": 6, "burst": 2, "window": 4,
                            "rounds": 2}))
    with pytest.raises(ConfigError, match="^algorithm.num_workers"):
        load_config(config({"code": "m_sgc", "num_workers": 6, "burst": 1, "window": 3,
                            "lam": 2, "rounds": 2}))            # 18 pieces > 12 clients
    with pytest.raises(ConfigError, match="^algorithm.live"):
        load_config(config({"code": "m_sgc", "num_workers": 6, "live": True, "rounds": 2}))


def test_sequential_codes_resume_exactly_from_a_checkpoint():
    from fedopt.checkpoint import decode_checkpoint, encode_checkpoint

    clock = {"compute": {"name": "markov", "p_good_to_bad": 0.25, "p_bad_to_good": 0.5}}
    cfg = load_config(config({"code": "m_sgc", "num_workers": 6, "burst": 1, "window": 3,
                              "lam": 2, "rounds": 8}, clock, num_clients=40))
    full = Simulation(cfg)
    rows = [full.step() for _ in range(8)]
    half = Simulation(cfg)
    for _ in range(3):
        half.step()
    blob = encode_checkpoint(half.checkpoint())
    resumed = Simulation(cfg)
    resumed.restore(decode_checkpoint(blob))
    rows2 = [resumed.step() for _ in range(5)]
    assert rows2 == rows[3:]
    for k, v in full.state.params.items():
        torch.testing.assert_close(resumed.state.params[k], v, rtol=0, atol=0)
    longer = Simulation(load_config(config({"code": "m_sgc", "num_workers": 6, "burst": 1,
                                            "window": 3, "lam": 2, "rounds": 12}, clock,
                                           num_clients=40)))
    longer.restore(decode_checkpoint(blob))
    with pytest.raises(ConfigError, match="^algorithm.rounds"):
        longer.step()
    for s in (full, half, resumed, longer):
        s.close()


def test_client_batch_size_given_switches_to_minibatches_as_the_config_contract_says():
    """The issue's contract: full-batch partitions unless client.batch_size is set. Given, the
    run is the explicit minibatch run; not given, the full-batch run; minibatch given wins; and
    where minibatches do not run (sequential codes) a batch size is refused, not ignored."""
    clock = CLOCKS["pareto_slow_cohort"]
    base = config({"code": "cyclic", "num_workers": 6, "stragglers": 2, "rounds": 8}, clock)
    assert "batch_size" not in base["client"]
    assert load_config(base)["algorithm"]["minibatch"] is False
    given = copy.deepcopy(base)
    given["client"]["batch_size"] = 5
    assert load_config(given)["algorithm"]["minibatch"] is True
    given["algorithm"]["minibatch"] = False
    assert load_config(given)["algorithm"]["minibatch"] is False
    sgc = config({"code": "sr_sgc", "num_workers": 6, "rounds": 8}, clock)
    sgc["client"]["batch_size"] = 5
    with pytest.raises(ConfigError, match=r"^client\.batch_size: gradient_coding with code "
                                          r"'sr_sgc' computes full-partition gradients"):
        load_config(sgc)
