"""SCAFFOLD (and the per-client ClientTable it stores c_i in) against independent oracles
(federated.md §4.1, §5 items 24–27): FedAvg in round 0, the average-gradient identity of
option II, the exact global optimum of heterogeneous least squares, autograd for option I."""
import io

import numpy as np
import pytest
import torch
from torch import nn

import fedopt
from fedopt.algorithms import FedAvg
from fedopt.algorithms.client_state import ClientTable, population_weights
from fedopt.algorithms.scaffold import TABLE_KEY, Scaffold
from fedopt.config import ConfigError, load_config
from fedopt.data import FederatedDataset
from fedopt.engine.batches import local_step_counts, plan_batches
from fedopt.engine.executor import VectorizedExecutor
from fedopt.engine.local import FunctionalModel, LocalTrainer, model_params
from fedopt.optim import make
from tests.algorithms.problems import ce_data, ce_model, D, global_optimum, least_squares_data, ls_executor

# --------------------------------------------------------------------------- problems


def ls_start():
    return {"w": torch.zeros(D, dtype=torch.float64)}


# --------------------------------------------------------------------------- ClientTable

def test_client_table_reads_zero_until_stored_and_keeps_the_population_mean():
    like = {"a": torch.zeros(2, 3, dtype=torch.float64), "b": torch.zeros(4, dtype=torch.float64)}
    p = population_weights(np.array([3, 1, 4, 1, 5, 9, 2]), "num_samples")
    table = ClientTable.create(like, p, capacity=2)
    assert table.size == 0 and table.capacity == 2
    assert all(float(v.abs().sum()) == 0 for v in table.gather(np.array([0, 6])).values())
    dense = {k: np.zeros((7,) + tuple(v.shape)) for k, v in like.items()}
    g = np.random.default_rng(0)
    for ids in ([5, 1], [2, 5, 0], [6, 4, 3], [1]):       # grows past capacity 2, revisits
        ids = np.array(ids)
        new = {k: torch.tensor(g.normal(size=(len(ids),) + tuple(v.shape))) for k, v in like.items()}
        table.put(ids, new)
        for k in dense:
            dense[k][ids] = new[k].numpy()
        for k in dense:   # independent oracle: the dense table and its weighted mean
            np.testing.assert_array_equal(table.dense()[k].numpy(), dense[k])
            np.testing.assert_allclose(table.mean[k].numpy(), np.tensordot(p, dense[k], 1),
                                       rtol=1e-12, atol=1e-14)
    assert table.size == 7 and table.capacity == 7         # doubled 2 -> 4, then capped at N
    assert sorted(table.stored_ids()) == list(range(7))
    buf = io.BytesIO()
    torch.save(table.data, buf)
    buf.seek(0)
    back = ClientTable(torch.load(buf))
    for k in dense:
        np.testing.assert_array_equal(back.dense()[k].numpy(), dense[k])
    assert population_weights(np.array([3, 1]), "uniform").tolist() == [0.5, 0.5]


def test_client_table_stores_only_the_clients_seen():
    like = {"w": torch.zeros(1000)}
    table = ClientTable.create(like, np.full(10_000, 1e-4))
    table.put(np.array([17, 9_999, 5]), {"w": torch.ones(3, 1000)})
    assert table.size == 3 and table.capacity == 3
    assert table.nbytes() == 3 * 1000 * 4
    assert float(table.gather(np.array([4]))["w"].abs().sum()) == 0.0
    with pytest.raises(ValueError, match="distinct"):
        table.put(np.array([1, 1]), {"w": torch.ones(2, 1000)})


# --------------------------------------------------------------------------- SCAFFOLD

def test_round_zero_with_zero_control_variates_is_fedavg():
    """Oracle 24, on a small MLP with Adam local steps, minibatches and partial participation."""
    sizes = [7, 12, 5, 9, 11]
    data, model = ce_data(sizes), ce_model()
    x0 = model_params(model)

    def executor():
        trainer = LocalTrainer(FunctionalModel(model), make("adam", lr=0.05))
        return VectorizedExecutor(data, trainer, batch_size=4, local_steps=6, local_epochs=None,
                                  seed=0, chunk_size=2)

    sc = Scaffold(np.array(sizes), 3, seed=1)
    fa = FedAvg(np.array(sizes), 3, seed=1)
    s1, _ = sc.run_round(sc.init(x0), executor(), None)
    f1, _ = fa.run_round(fa.init(x0), executor(), None)
    for k in x0:
        torch.testing.assert_close(s1.params[k], f1.params[k], rtol=0, atol=1e-14)
    table = ClientTable(s1.clients[TABLE_KEY])
    assert sorted(table.stored_ids()) == sorted(sc.sample_clients(0))   # only sampled clients


def test_option_two_control_variate_is_the_average_local_gradient():
    """Oracle 26 with the ACTUAL step counts u_i = E·⌈n_i/B⌉ (epochs mode, minibatches): with
    c = c_i = 0, c_i⁺ = (x − y_i)/(u_i η_l) = (1/u_i) Σ_k g_i(y_k; ξ_k), computed by a plain
    per-client loop, η_l being the lr of the optimizer this round runs with; and
    c = Σ_j p_j c_j over all N (1/N with uniform weights)."""
    sizes = [5, 13, 8, 20]
    data = least_squares_data(sizes)
    lr, B, E = 0.04, 4, 2
    alg = Scaffold(np.array(sizes), 3, aggregation_weights="uniform", seed=3)
    state = alg.init(ls_start())
    state.params["w"] += torch.tensor([0.3, -0.2, 0.1, 0.5], dtype=torch.float64)
    x = state.params["w"].clone()
    # the round's (decayed) lr comes with the optimizer passed in, not the trainer's default
    ex = ls_executor(data, 1.0, epochs=E, batch=B)
    state, _ = alg.run_round(state, ex, make("sgd", lr=lr))
    ids = alg.sample_clients(0)
    off = data.offsets.numpy()
    steps = local_step_counts(np.array(sizes), B, None, E)
    expected = np.zeros((len(sizes), D))
    for i in ids:
        plan = plan_batches(0, 0, np.array([i]), off, B, steps[[i]])
        y, gsum = x.numpy().copy(), np.zeros(D)
        for k in range(int(steps[i])):
            rows = plan.rows[k, 0][plan.weight[k, 0] > 0].numpy()
            a, t = data.x[rows, :-1].numpy(), data.x[rows, -1].numpy()
            g = a.T @ (a @ y - t) / len(rows)
            gsum += g
            y = y - lr * g
        expected[i] = gsum / steps[i]
    assert len(set(steps[ids])) > 1                     # the clients do differ in u_i
    table = ClientTable(state.clients[TABLE_KEY])
    np.testing.assert_allclose(table.dense()["w"].numpy(), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(table.mean["w"].numpy(), expected.sum(0) / len(sizes),
                               rtol=1e-10, atol=1e-12)


def test_option_one_control_variate_is_the_full_local_gradient_at_the_server_model():
    sizes = [6, 11, 3]
    data, model = ce_data(sizes, seed=2), ce_model(2)
    x0 = model_params(model)
    trainer = LocalTrainer(FunctionalModel(model), make("sgd", lr=0.1))
    ex = VectorizedExecutor(data, trainer, batch_size=4, local_steps=3, local_epochs=None, seed=0)
    ids = np.array([2, 0, 1])
    got = ex.full_gradients(x0, ids)
    off = data.offsets.numpy()
    for j, i in enumerate(ids):
        m = ce_model(2)
        m.load_state_dict(x0)
        xi, yi = data.x[off[i]:off[i + 1]], data.y[off[i]:off[i + 1]]
        nn.functional.cross_entropy(m(xi), yi).backward()
        for name, prm in m.named_parameters():
            torch.testing.assert_close(got[name][j], prm.grad, rtol=1e-12, atol=1e-14)


def test_identical_clients_control_variates_agree_and_later_rounds_are_fedavg():
    """Oracle 25: identical data, full batches, full participation: c_i = c after one round,
    so the correction c − c_i vanishes and rounds 1, 2 are FedAvg's from the same model."""
    one = least_squares_data([6])
    x = one.x.repeat(3, 1)
    z = torch.zeros(2, dtype=torch.int64)
    data = FederatedDataset(x=x, y=torch.zeros(18, dtype=torch.int64),
                            offsets=torch.tensor([0, 6, 12, 18]), x_test=x[:2], y_test=z,
                            client_test=z, num_classes=1, name="identical")
    alg = Scaffold(np.array([6, 6, 6]), 3)
    state = alg.run_round(alg.init(ls_start()), ls_executor(data, 0.1, steps=5, batch=6), None)[0]
    table = ClientTable(state.clients[TABLE_KEY])
    for ci in table.dense()["w"]:
        torch.testing.assert_close(ci, table.mean["w"], rtol=1e-12, atol=1e-14)
    fa = FedAvg(np.array([6, 6, 6]), 3)
    f = fa.init({"w": state.params["w"].clone()})
    f.round = 1
    for _ in range(2):
        state = alg.run_round(state, ls_executor(data, 0.1, steps=5, batch=6), None)[0]
        f = fa.run_round(f, ls_executor(data, 0.1, steps=5, batch=6), None)[0]
    torch.testing.assert_close(state.params["w"], f.params["w"], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("option,weights", [("II", "uniform"), ("I", "num_samples")])
def test_scaffold_converges_to_the_exact_optimum_where_fedavg_drifts(option, weights):
    """Oracle 27: heterogeneous Hessians, full participation, full-batch K = 20 local steps."""
    sizes = [5, 9, 7, 12, 6]
    data = least_squares_data(sizes)
    p = population_weights(np.array(sizes), weights)
    w_star = global_optimum(data, p)
    runs = {}
    for name, alg in (("scaffold", Scaffold(np.array(sizes), 5, aggregation_weights=weights,
                                            option=option)),
                      ("fedavg", FedAvg(np.array(sizes), 5, aggregation_weights=weights))):
        ex = ls_executor(data, 0.05, steps=20)
        state = alg.init(ls_start())
        for _ in range(300):
            state, _ = alg.run_round(state, ex, None)
        runs[name] = np.linalg.norm(state.params["w"].numpy() - w_star)
    assert runs["scaffold"] < 1e-9
    assert runs["fedavg"] > 0.1                         # client drift: a biased fixed point


def test_scaffold_with_partial_participation_reaches_the_optimum():
    sizes = [5, 9, 7, 12, 6]
    data = least_squares_data(sizes)
    alg = Scaffold(np.array(sizes), 2, seed=1)
    ex = ls_executor(data, 0.05, steps=20)
    state = alg.init(ls_start())
    for _ in range(300):
        state, _ = alg.run_round(state, ex, None)
    w_star = global_optimum(data, population_weights(np.array(sizes), "num_samples"))
    assert np.linalg.norm(state.params["w"].numpy() - w_star) < 1e-7


# --------------------------------------------------------------------------- config / resume

def _config(**algorithm):
    return {"seed": 2, "data": {"name": "synthetic", "num_clients": 20},
            "model": {"name": "logreg"},
            "algorithm": {"name": "scaffold", "rounds": 6, "clients_per_round": 4, **algorithm},
            "client": {"local_steps": 5, "batch_size": 10, "optimizer": {"name": "sgd", "lr": 0.05},
                       "lr_decay": 0.9},
            "checkpoint_every": 1}


@pytest.mark.parametrize("option", ["I", "II"])
def test_resumed_scaffold_run_reproduces_the_uninterrupted_one(tmp_path, option):
    full = fedopt.run(_config(option=option), out_dir=tmp_path / "full", progress=False)
    part = _config(option=option)
    part["algorithm"]["rounds"] = 3
    fedopt.run(part, out_dir=tmp_path / "part", progress=False)
    resumed = fedopt.run(_config(option=option), out_dir=tmp_path / "part", progress=False,
                         resume=True)
    for k, v in full.final_params.items():
        assert torch.equal(v, resumed.final_params[k])
    assert [m["test_loss"] for m in resumed.metrics] == [m["test_loss"] for m in full.metrics]


def test_bad_option_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"^algorithm\.option"):
        load_config(_config(option="III"))
