"""Non-finite values: a diverging client is named (``on_nonfinite: error``) or left out exactly
as if it had not returned (``drop``), on every algorithm family; the server never installs a
non-finite model; evaluation of a non-finite model reports no accuracy.

The poisoned client. Client ``POISON``'s rows all have the feature vector x = 3e20·1 (d = 3),
labels alternating 0, 1, 0, 1, 0; training in float32 (largest number 3.4e38). Its first local
step is finite: the logits W₀x + b are at most 3e20·Σ|W₀| ≈ 1e21. The softmax then saturates on
one class k, and the rows labelled ≠ k (2 or 3 of its 5) give ∇_W = frac·(e_k − e_y)xᵀ with
|entries| ≥ 0.4·3e20, so W₁ = W₀ − 0.1·∇_W has entries of magnitude ≥ 1.2e19 and the next
logits multiply them by 3e20: products of 3.6e39 > 3.4e38 overflow to ±inf, the softmax is NaN
(inf − inf), hence the gradient and every later iterate. With ≥ 2 local steps its final model is
NaN whatever the minibatch order. Every other client has standard-normal features and stays
finite. Hand-computed references are float64 (tolerance: float32 round-off).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedopt.config import load_config
from fedopt.engine.evaluate import evaluate
from fedopt.engine.nonfinite import NonFiniteError, describe_ids, finite_rows
from fedopt.simulation import Simulation

COUNTS = [4, 6, 5, 3, 7]
POISON = 2
D, C = 3, 2
LR, STEPS = 0.1, 3


def write_data(path, poison=POISON, scale=3e20):
    """The npz set of the module docstring (train rows grouped by client)."""
    rng = np.random.default_rng(0)
    xs, ys, cs = [], [], []
    for i, n in enumerate(COUNTS):
        x = np.full((n, D), scale) if i == poison else rng.standard_normal((n, D))
        xs.append(x)
        ys.append(np.arange(n) % C)
        cs.append(np.full(n, i))
    x_test = rng.standard_normal((10, D))
    np.savez(path, x_train=np.concatenate(xs), y_train=np.concatenate(ys),
             client_train=np.concatenate(cs), x_test=x_test, y_test=np.arange(10) % C,
             client_test=np.arange(10) % len(COUNTS))
    return str(path)


def config(path, algorithm="fedavg", policy="error", rounds=1, extra=None, executor=None):
    alg = {"name": algorithm, "rounds": rounds, "clients_per_round": len(COUNTS), **(extra or {})}
    return load_config({
        "seed": 3, "data": {"name": "npz", "path": path, "num_classes": C},
        "model": {"name": "logreg"}, "algorithm": alg,
        "client": {"local_steps": STEPS, "batch_size": max(COUNTS),
                   "optimizer": {"name": "sgd", "lr": LR}},
        "executor": {"chunk_size": 2, **(executor or {})},
        "eval_train": False, "on_nonfinite": policy})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("nf") / "poisoned.npz")


def local_deltas(sim, leave_out=(POISON,)):
    """By hand, float64: each kept client takes STEPS full-batch gradient steps (batch size ≥
    every client's rows: each minibatch is all its rows, in any order) on the mean cross-entropy
    of W x + b from the global model; returns {client: y_i − x}."""
    x0 = {k: v.detach().double().clone() for k, v in sim.state.params.items()}
    data = sim.data
    off = data.offsets.tolist()
    out = {}
    for i in [i for i in range(len(COUNTS)) if i not in leave_out]:
        xi, yi = data.x[off[i]:off[i + 1]].double(), data.y[off[i]:off[i + 1]]
        W = x0["linear.weight"].clone().requires_grad_(True)
        b = x0["linear.bias"].clone().requires_grad_(True)
        for _ in range(STEPS):
            loss = F.cross_entropy(xi @ W.T + b, yi)
            gW, gb = torch.autograd.grad(loss, (W, b))
            W = (W - LR * gW).detach().requires_grad_(True)
            b = (b - LR * gb).detach().requires_grad_(True)
        out[i] = {"linear.weight": W.detach() - x0["linear.weight"],
                  "linear.bias": b.detach() - x0["linear.bias"]}
    return out


def hand_fedavg(sim, leave_out=(POISON,), extra_weights=None):
    """x + Σ_kept w_i Δ_i with w_i = n_i / Σ_kept n_j (plus Σ_kept extra_i Δ_i if given)."""
    deltas = local_deltas(sim, leave_out)
    total = sum(COUNTS[i] for i in deltas)
    new = {k: v.double().clone() for k, v in sim.state.params.items()}
    for i, d in deltas.items():
        w = COUNTS[i] / total + (extra_weights[i] if extra_weights else 0.0)
        for k in new:
            new[k] += w * d[k]
    return new


def assert_params_close(a, b, tol=2e-5):
    for k in b:
        got = a[k].double()
        assert torch.allclose(got, b[k], rtol=tol, atol=tol), (k, (got - b[k]).abs().max())


# -- the error policy names exactly the client and the round ---------------------------------

FAMILIES = [("fedavg", {}), ("fedadam", {}), ("fedprox", {"mu": 0.1}),
            ("scaffold", {"option": "I"}), ("scaffold", {"option": "II"}),
            ("feddyn", {}), ("fedspeed", {}),
            ("fedbuff", {"buffer_size": 2}), ("async_fedavg", {}), ("fedasync", {})]
FAMILY_IDS = [f"{n}{'-' + e['option'] if 'option' in e else ''}" for n, e in FAMILIES]


@pytest.mark.parametrize("name,extra", FAMILIES, ids=FAMILY_IDS)
def test_error_names_the_client_and_round(data, name, extra):
    sim = Simulation(config(data, name, "error", rounds=3, extra=extra))
    start = {k: v.clone() for k, v in sim.state.params.items()}
    with pytest.raises(NonFiniteError) as e:
        while not sim.finished():
            sim.step()
    msg = str(e.value)
    assert f"client {POISON} produced NaN/inf" in msg, msg
    assert msg.startswith("round 1: ") or msg.startswith("rounds 1"), msg
    assert "on_nonfinite: drop" in msg
    if name not in ("fedbuff", "async_fedavg", "fedasync"):   # synchronous: nothing applied
        assert sim.state.round == 0
        for k in start:
            assert torch.equal(sim.state.params[k], start[k])


@pytest.mark.parametrize("name,extra", FAMILIES, ids=FAMILY_IDS)
def test_drop_keeps_the_model_finite_and_counts(data, name, extra):
    sim = Simulation(config(data, name, "drop", rounds=4, extra=extra))
    rows = []
    while not sim.finished():
        rows.append(sim.step())
    for k, v in sim.state.params.items():
        assert torch.isfinite(v).all(), k
    assert rows[-1]["nonfinite_dropped"] >= 1
    counts = [r["nonfinite_dropped"] for r in rows]
    assert counts == sorted(counts)                       # cumulative
    assert all(math.isfinite(r["local_loss"]) for r in rows if "local_loss" in r)
    # the poisoned client's state never enters the per-client table
    for key in ("scaffold_c", "dyn_h"):
        table = sim.state.clients.get(key)
        if table is not None:
            assert int(table["slot"][POISON]) == -1, key


@pytest.mark.parametrize("name,extra", [("fedavg", {}), ("scaffold", {"option": "I"}),
                                        ("scaffold", {"option": "II"}), ("feddyn", {}),
                                        ("fedbuff", {"buffer_size": len(COUNTS)})],
                         ids=["fedavg", "scaffold-I", "scaffold-II", "feddyn", "fedbuff-all"])
def test_drop_equals_hand_fedavg_over_the_others(data, name, extra):
    """Round 1 of FedAvg dropping the poisoned client is FedAvg over the other four with
    renormalised weights. So is round 1 of SCAFFOLD (all control variates are still zero) and of
    FedBuff whose buffer holds all clients with equal start versions (num_samples weights).
    FedDyn with α → 0 (α = 1e-30: its local terms vanish in float32) adds back
    h̄ = Σ_j (n_j/n) H_j with H_j = Δ_j for the kept clients and 0 for the dropped one."""
    extra_w = None
    if name == "feddyn":
        extra = {"alpha": 1e-30}
        extra_w = {i: COUNTS[i] / sum(COUNTS) for i in range(len(COUNTS))}
    if name == "fedbuff":
        extra = {**extra, "aggregation_weights": "num_samples", "staleness": "constant"}
    sim = Simulation(config(data, name, "drop", rounds=1, extra=extra))
    want = hand_fedavg(sim, extra_weights=extra_w)
    stats = sim.step()
    assert stats["nonfinite_dropped"] == 1
    assert sim.client_updates == len(COUNTS) - 1
    assert_params_close(sim.state.params, want)


def test_nothing_dropped_is_the_plain_run(tmp_path):
    """Without a poisoned client, ``drop`` and ``error`` give the same bits and FedAvg is the
    hand-computed round over all clients."""
    path = write_data(tmp_path / "clean.npz", poison=-1)
    a = Simulation(config(path, "fedavg", "error"))
    b = Simulation(config(path, "fedavg", "drop"))
    want = hand_fedavg(a, leave_out=())
    a.step()
    stats = b.step()
    assert stats["nonfinite_dropped"] == 0
    for k in want:
        assert torch.equal(a.state.params[k], b.state.params[k])
    assert_params_close(a.state.params, want)


def test_round_with_every_client_dropped_changes_nothing(tmp_path):
    """All clients poisoned: under drop the round keeps no update, so the model and the server
    optimizer's state (FedAdam's moments) stay as they were, and the local loss is NaN."""
    path = tmp_path / "all.npz"
    n = sum(COUNTS)
    np.savez(path, x_train=np.full((n, D), 3e20), y_train=np.arange(n) % C,
             client_train=np.repeat(np.arange(len(COUNTS)), COUNTS),
             x_test=np.zeros((4, D)), y_test=np.arange(4) % C, client_test=np.arange(4))
    sim = Simulation(config(str(path), "fedadam", "drop"))
    before = {k: v.clone() for k, v in sim.state.params.items()}
    opt_before = {k: (v.clone() if torch.is_tensor(v) else v)
                  for k, v in sim.state.opt_state.items()}
    stats = sim.step()
    assert stats["nonfinite_dropped"] == len(COUNTS) and sim.client_updates == 0
    assert math.isnan(stats["local_loss"])
    assert sim.state.round == 1
    for k in before:
        assert torch.equal(sim.state.params[k], before[k])
    for k, v in opt_before.items():
        if torch.is_tensor(v):
            assert torch.equal(sim.state.opt_state[k], v)


def test_client_state_nonfinite_is_dropped_by_rerunning_without_it(data, tmp_path, monkeypatch):
    """A client whose model is finite but whose new state is not (here SCAFFOLD option I's
    ∇F_i made inf for client 1) is named under error and, under drop, the round is the one
    without it: SCAFFOLD's first round (zero control variates) is FedAvg over the rest."""
    from fedopt.engine.executor import VectorizedExecutor

    real = VectorizedExecutor.full_gradients

    def poisoned(executor, params, ids):
        g = real(executor, params, ids)
        bad = torch.as_tensor(np.asarray(ids) == 1)
        return {k: torch.where(bad.view((-1,) + (1,) * (v.ndim - 1)), math.inf, v)
                for k, v in g.items()}

    monkeypatch.setattr(VectorizedExecutor, "full_gradients", poisoned)
    clean = write_data(tmp_path / "clean.npz", poison=-1)
    sim = Simulation(config(clean, "scaffold", "error", extra={"option": "I"}))
    with pytest.raises(NonFiniteError, match=r"^round 1: client 1 produced NaN/inf values in "
                                             r"its control variate"):
        sim.step()
    sim = Simulation(config(data, "scaffold", "drop", extra={"option": "I"}))
    want = hand_fedavg(sim, leave_out=(1, POISON))
    stats = sim.step()
    assert stats["nonfinite_dropped"] == 2
    assert_params_close(sim.state.params, want)
    slot = sim.state.clients["scaffold_c"]["slot"]
    assert int(slot[1]) == -1 and int(slot[POISON]) == -1


def test_server_step_never_installs_nonfinite_params(tmp_path):
    """Clean clients, but a server learning rate of 1e39, beyond float32's 3.4e38, makes
    x + η Δ infinite wherever Δ ≠ 0 (NaN where Δ = 0): both policies
    raise naming the round, and the model is the previous one."""
    path = write_data(tmp_path / "clean.npz", poison=-1)
    for policy in ("error", "drop"):
        cfg = config(path, "fedavg", policy, rounds=2)
        cfg["algorithm"]["server_optimizer"]["lr"] = 1e39
        sim = Simulation(cfg)
        before = {k: v.clone() for k, v in sim.state.params.items()}
        with pytest.raises(NonFiniteError, match=r"^round 1: the server step produced non-finite"):
            sim.step()
        assert sim.state.round == 0
        for k in before:
            assert torch.equal(sim.state.params[k], before[k])


# -- evaluation --------------------------------------------------------------------------------

def test_evaluate_reports_no_accuracy_for_nonfinite_outputs(data):
    sim = Simulation(config(data))
    p = {k: v.clone() for k, v in sim.state.params.items()}
    x, y = sim.data.x_test, sim.data.y_test
    loss, acc = evaluate(sim.fmodel, p, x, y).values()
    assert math.isfinite(loss) and 0.0 <= acc <= 1.0
    p["linear.bias"][0] = math.nan             # logits of class 0 NaN on every row
    loss, acc = evaluate(sim.fmodel, p, x, y, chunk_rows=3).values()
    assert math.isnan(loss) and acc is None
    p["linear.bias"][0] = -math.inf            # class 0 logit −inf: CE of class-0 rows is
    #                                            z₁ − (−inf) = +inf, of class-1 rows 0
    loss, acc = evaluate(sim.fmodel, p, x, y).values()
    assert loss == math.inf and acc is None


# -- helpers ------------------------------------------------------------------------------------

def test_finite_rows_and_describe_ids():
    t = torch.zeros(4, 2, 3)
    t[1, 0, 2] = math.nan
    t[3, 1, 1] = -math.inf
    loss = torch.tensor([0.0, 0.0, math.inf, 0.0])
    assert finite_rows({"a": t}, loss).tolist() == [True, False, False, False]
    assert describe_ids([5]) == "client 5"
    assert describe_ids(range(10)) == "clients 0, 1, 2, 3, 4, 5, 6, 7, ... (10 in all)"


def test_diverged_mlp_run_exits_nonzero_with_one_error_line(tmp_path, capsys):
    """The issue's run: MLP on Synthetic with client lr 100 diverges; ``fedopt run`` exits 2
    with one ``error:`` line naming the round and clients (it used to finish with exit 0)."""
    from fedopt.simulations import cli

    rc = cli.main(["run", "simulations/configs/quickstart.yaml", "--out", str(tmp_path / "run"),
                   "--set", "model.name=mlp", "--set", "client.optimizer.lr=100",
                   "--set", "algorithm.rounds=4", "--set", "client.local_steps=5",
                   "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0
    assert len(err) == 1 and err[0].startswith("error: round "), err
    assert "produced NaN/inf values in local training" in err[0]


def test_finite_rows_overflowing_sum_of_finite_entries_is_finite():
    """The fast path sums rows: 3e38 + 3e38 overflows float32 although both entries are
    finite; the exact fallback must still call that row finite."""
    t = torch.tensor([[3e38, 3e38], [1.0, math.nan], [1.0, 2.0]], dtype=torch.float32)
    assert torch.isinf(t[0].sum())
    assert finite_rows({"w": t}).tolist() == [True, False, True]


def test_a_client_with_two_jobs_in_one_call_is_judged_per_job(data):
    """Two jobs of client 3 in one run_jobs call (as when a fast FedBuff client arrives twice
    in one buffer window), the first from a NaN start: only that job is left out, by position,
    and the sum is the second job's weighted delta (renormalised over the kept weight)."""
    sim = Simulation(config(data, policy="drop", executor={"dtype": "float64"}))
    ex = sim.executor
    good = sim.state.params
    starts = {k: torch.stack([torch.full_like(v, float("nan")), v]) for k, v in good.items()}
    ids, keys, w = np.array([3, 3]), np.array([0, 0]), np.array([0.25, 0.75])
    out = ex.run_jobs(starts, ids, keys, w)
    assert out.nonfinite.tolist() == [0] and out.kept(2).tolist() == [False, True]
    assert out.updates == 1
    alone = ex.run_jobs({k: v[1:] for k, v in starts.items()}, ids[1:], keys[1:], np.array([1.0]))
    for k in good:   # Σ w Δ over the kept job, scaled by Σw / Σw_kept = 1 / 0.75
        torch.testing.assert_close(out.delta_sum[k], alone.delta_sum[k], rtol=1e-12, atol=1e-14)
