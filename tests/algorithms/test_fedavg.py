"""FedAvg / FedProx on the vectorized engine against independent oracles (federated.md §5)."""
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from fedopt.algorithms import FedAvg, ServerOptimizer
from fedopt.data import FederatedDataset
from fedopt.engine.batches import local_step_counts, plan_batches
from fedopt.engine.executor import VectorizedExecutor
from fedopt.engine.local import FunctionalModel, LocalTrainer, model_params
from fedopt.engine.program import LocalProgram
from fedopt.optim import make

D, C = 5, 3


def _dataset(sizes, seed=0, identical=False):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    if identical:
        x0 = torch.randn(sizes[0], D, generator=g, dtype=torch.float64)
        y0 = torch.randint(0, C, (sizes[0],), generator=g)
        x, y = x0.repeat(len(sizes), 1), y0.repeat(len(sizes))
    else:
        x = torch.randn(n, D, generator=g, dtype=torch.float64)
        y = torch.randint(0, C, (n,), generator=g)
    offsets = torch.tensor(np.concatenate([[0], np.cumsum(sizes)]), dtype=torch.int64)
    return FederatedDataset(x=x, y=y, offsets=offsets, x_test=x[:4], y_test=y[:4],
                            client_test=torch.zeros(4, dtype=torch.int64), num_classes=C,
                            name="tiny")


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, C)).double()


def _executor(data, model, opt, *, steps=None, epochs=None, batch=4, mu=0.0, chunk=None, seed=0):
    trainer = LocalTrainer(FunctionalModel(model), opt, LocalProgram(prox_mu=mu), seed=seed)
    return VectorizedExecutor(data, trainer, batch_size=batch, local_steps=steps,
                              local_epochs=epochs, seed=seed, chunk_size=chunk)


def _centralized_grad(model, params, x, y):
    m = _model()
    m.load_state_dict({k: v.clone() for k, v in params.items()})
    nn.functional.cross_entropy(m(x), y).backward()
    return {k: p.grad for k, p in m.named_parameters()}


def test_one_full_batch_step_is_one_step_of_centralized_gd():
    sizes = [3, 7, 5, 9]
    data, model = _dataset(sizes), _model()
    lr = 0.3
    ex = _executor(data, model, make("sgd", lr=lr), steps=1, batch=max(sizes))
    alg = FedAvg(np.array(sizes), 4, ServerOptimizer("sgd", lr=1.0))
    state = alg.init(model_params(model))
    ids = alg.sample_clients(0)
    out = ex.run_round(state.params, ids, alg.weights(ids), 0)
    new = alg.apply(state, out.delta_sum).params
    g = _centralized_grad(model, state.params, data.x, data.y)
    for k in new:
        torch.testing.assert_close(new[k], state.params[k] - lr * g[k], rtol=1e-12, atol=1e-12)


def test_identical_clients_full_batch_equal_k_steps_of_gd():
    sizes = [6, 6, 6]
    data, model = _dataset(sizes, identical=True), _model()
    lr, K = 0.2, 4
    ex = _executor(data, model, make("sgd", lr=lr), steps=K, batch=6)
    alg = FedAvg(np.array(sizes), 3)
    state = alg.init(model_params(model))
    out = ex.run_round(state.params, np.arange(3), alg.weights(np.arange(3)), 0)
    new = alg.apply(state, out.delta_sum).params
    p = {k: v.clone() for k, v in state.params.items()}
    for _ in range(K):
        g = _centralized_grad(model, p, data.x[:6], data.y[:6])
        p = {k: p[k] - lr * g[k] for k in p}
    for k in new:
        torch.testing.assert_close(new[k], p[k], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mu", [0.0, 0.5])
def test_vectorized_round_equals_a_per_client_torch_loop(mu):
    """Adam local steps, partial batches, partial participation, epochs mode: the vectorized
    aggregate equals a plain loop over clients with torch.optim.Adam and autograd."""
    sizes = [3, 11, 6, 14, 9, 5]
    data, model = _dataset(sizes, seed=1), _model(1)
    B, E, lr = 4, 2, 0.05
    ex = _executor(data, model, make("adam", lr=lr), epochs=E, batch=B, mu=mu, chunk=4)
    alg = FedAvg(np.array(sizes), 4, seed=3)
    x0 = model_params(model)
    ids = alg.sample_clients(5)
    w = alg.weights(ids)
    out = ex.run_round(x0, ids, w, 5)

    counts = np.array(sizes)
    offsets = data.offsets.numpy()
    expected = {k: torch.zeros_like(v) for k, v in x0.items()}
    for i, wi in zip(ids, w):
        steps = local_step_counts(counts[[i]], B, None, E)
        plan = plan_batches(0, 5, np.array([i]), offsets, B, steps)
        m = _model(1)
        m.load_state_dict({k: v.clone() for k, v in x0.items()})
        opt = torch.optim.Adam(m.parameters(), lr=lr)
        for k in range(int(steps[0])):
            sel = plan.weight[k, 0] > 0
            rows = plan.rows[k, 0][sel]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(m(data.x[rows]), data.y[rows])
            if mu:
                loss = loss + mu / 2 * sum(((p - x0[n]) ** 2).sum() for n, p in m.named_parameters())
            loss.backward()
            opt.step()
        for n, p in m.named_parameters():
            expected[n] += wi * (p.detach() - x0[n])
    for k in expected:
        torch.testing.assert_close(out.delta_sum[k], expected[k], rtol=1e-9, atol=1e-11)


def test_chunking_does_not_change_the_aggregate():
    sizes = [4, 9, 6, 12, 3, 7, 8]
    data, model = _dataset(sizes, seed=2), _model(2)
    x0 = model_params(model)
    ids = np.arange(7)
    w = FedAvg(np.array(sizes), 7).weights(ids)
    outs = [_executor(data, model, make("sgd", lr=0.1, momentum=0.9), steps=5, chunk=c)
            .run_round(x0, ids, w, 2).delta_sum for c in (1, 3, None)]
    for o in outs[1:]:
        for k in o:
            torch.testing.assert_close(o[k], outs[0][k], rtol=1e-12, atol=1e-13)


def test_single_client_fedavg_is_local_sgd():
    data, model = _dataset([13]), _model(3)
    x0 = model_params(model)
    ex = _executor(data, model, make("sgd", lr=0.1), steps=6, batch=5)
    alg = FedAvg(np.array([13]), 1)
    state = alg.init(x0)
    for r in range(2):
        out = ex.run_round(state.params, np.array([0]), np.array([1.0]), r)
        state = alg.apply(state, out.delta_sum)
    m = _model(3)
    for r in range(2):
        plan = plan_batches(0, r, np.array([0]), data.offsets.numpy(), 5, np.array([6]))
        for k in range(6):
            rows = plan.rows[k, 0][plan.weight[k, 0] > 0]
            m.zero_grad()
            nn.functional.cross_entropy(m(data.x[rows]), data.y[rows]).backward()
            with torch.no_grad():
                for p in m.parameters():
                    p -= 0.1 * p.grad
    for n, p in m.named_parameters():
        torch.testing.assert_close(state.params[n], p.detach(), rtol=1e-12, atol=1e-12)


def test_weights_sum_to_one_and_unbiased_weights_are_unbiased():
    counts = np.array([3, 10, 1, 6, 4])
    for kind in ("num_samples", "uniform"):
        alg = FedAvg(counts, 3, aggregation_weights=kind)
        for r in range(5):
            assert abs(alg.weights(alg.sample_clients(r)).sum() - 1) < 1e-12
    alg = FedAvg(counts, 2, aggregation_weights="unbiased")
    rng = np.random.default_rng(0)
    delta = rng.normal(size=(5, 3))
    p = counts / counts.sum()
    subsets = list(itertools.combinations(range(5), 2))
    mean = sum(alg.weights(np.array(s)) @ delta[list(s)] for s in subsets) / len(subsets)
    np.testing.assert_allclose(mean, p @ delta, rtol=1e-12)


def test_sampling_is_uniform_without_replacement_and_seeded():
    alg = FedAvg(np.ones(20, dtype=int), 5, seed=4)
    draws = [alg.sample_clients(r) for r in range(2000)]
    assert all(len(set(d)) == 5 for d in draws)
    freq = np.bincount(np.concatenate(draws), minlength=20) / 2000
    np.testing.assert_allclose(freq, 0.25, atol=0.04)
    assert np.array_equal(draws[7], FedAvg(np.ones(20, dtype=int), 5, seed=4).sample_clients(7))
    assert not np.array_equal(draws[7], FedAvg(np.ones(20, dtype=int), 5, seed=5).sample_clients(7))


def test_fedprox_with_huge_mu_keeps_clients_at_the_global_model():
    data, model = _dataset([8, 8], seed=5), _model(5)
    x0 = model_params(model)
    ex = _executor(data, model, make("sgd", lr=1e-4), steps=5, mu=1e4)
    out = ex.run_round(x0, np.arange(2), np.array([0.5, 0.5]), 0)
    free = _executor(data, model, make("sgd", lr=1e-4), steps=5).run_round(
        x0, np.arange(2), np.array([0.5, 0.5]), 0)
    for k in out.delta_sum:
        assert out.delta_sum[k].abs().max() < 0.5 * free.delta_sum[k].abs().max()


@pytest.mark.parametrize("name, kw", [("sgd", {"lr": 0.1, "momentum": 0.9}), ("adan", {"lr": 0.01}),
                                      ("mfac", {"lr": 0.01, "m": 4}), ("sophia", {"lr": 0.05, "update_period": 2}),
                                      ("adahessian", {"lr": 0.05})])
def test_shrinking_the_stack_of_finished_clients_changes_nothing(name, kw):
    """Epochs mode with very unequal client sizes: once most clients are done the stack shrinks
    to the active ones. Every client's final model equals its run alone (chunk of one client,
    where nothing can shrink), for optimizers with per-client state and Hessian probes."""
    sizes = [2, 30, 3, 4, 25, 2, 3]
    data, model = _dataset(sizes, seed=6), _model(6)
    x0 = model_params(model)
    ids = np.arange(7)
    w = FedAvg(np.array(sizes), 7).weights(ids)
    runs = [_executor(data, model, make(name, **kw), epochs=1, batch=3, chunk=c, mu=0.1)
            .run_round(x0, ids, w, 1, keep_local=True) for c in (None, 1)]
    for k in x0:
        torch.testing.assert_close(runs[0].local_params[k], runs[1].local_params[k],
                                   rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(runs[0].delta_sum[k], runs[1].delta_sum[k], rtol=1e-12, atol=1e-13)
    assert runs[0].loss_sum == pytest.approx(runs[1].loss_sum, rel=1e-12)
