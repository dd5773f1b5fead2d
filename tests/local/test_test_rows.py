"""The cap on the batch-size test's rows (client.batch_size_test.test_rows): a keyed
subsample of at most test_rows real rows per client, statistics equal to the direct
computation on exactly those rows, and the engine never takes per-example gradients of more."""
import numpy as np
import pytest
import torch
from torch import nn

import fedopt.local.batch_test as bt
from fedopt.engine.local import FunctionalModel, LocalTrainer
from fedopt.engine.program import LocalProgram
from fedopt.local.batch_test import BatchSizeTest, subsampled_statistics, capped_test_rows
from fedopt.local.config import LocalTraining
from fedopt.optim import make
from tests.local.test_batch_test import direct
from tests.local.test_engine import plan, problem


def test_subset_keeps_all_real_rows_below_the_cap_and_a_keyed_sample_above():
    W = 12
    real = np.array([12, 5, 9, 0])
    weight = (np.arange(W)[None] < real[:, None]).astype(float)
    pos, mask = capped_test_rows(weight, 6, seed=7, keys=np.array([3, 3, 3, 3]),
                            client_ids=np.array([0, 1, 2, 3]), step=4)
    assert pos.shape == mask.shape == (4, 6)
    assert mask.sum(1).tolist() == [6, 5, 6, 0]
    assert pos[1, :5].tolist() == [0, 1, 2, 3, 4]                # below the cap: every real row
    for c in (0, 2):
        kept = pos[c, mask[c] > 0]
        assert len(set(kept.tolist())) == 6 and (kept < real[c]).all()   # distinct real rows
        assert (np.diff(kept) > 0).all()
    again, _ = capped_test_rows(weight, 6, 7, np.array([3, 3, 3, 3]), np.array([0, 1, 2, 3]), 4)
    assert np.array_equal(pos, again)                            # a pure function of the keys
    other, _ = capped_test_rows(weight, 6, 7, np.array([3, 3, 3, 3]), np.array([0, 1, 2, 3]), 5)
    assert not np.array_equal(pos[0], other[0])                  # the step is a coordinate
    full, fmask = capped_test_rows(weight, None, 7, np.zeros(4), np.arange(4), 4)
    assert full.shape == (4, W) and np.array_equal(fmask, weight)


def test_subsample_is_uniform_over_the_real_rows():
    weight = np.ones((1, 10))
    hits = np.zeros(10)
    for step in range(3000):
        pos, _ = capped_test_rows(weight, 3, 11, np.array([0]), np.array([5]), step)
        hits[pos[0]] += 1
    np.testing.assert_allclose(hits / 3000, 0.3, atol=0.03)      # each row kept w.p. 3/10


@pytest.mark.parametrize("name", ["norm", "inner_product"])
def test_statistics_on_the_subsample_equal_the_direct_computation_on_those_rows(name):
    torch.manual_seed(0)
    C, W = 3, 20
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    fm = FunctionalModel(model)
    base = {k: v.detach() for k, v in model.named_parameters()}
    params = {k: v.unsqueeze(0) + 0.1 * torch.randn((C,) + v.shape, dtype=v.dtype)
              for k, v in base.items()}
    x = torch.randn(C, W, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (C, W))
    real = np.array([20, 13, 4])
    weight = torch.as_tensor((np.arange(W)[None] < real[:, None]).astype(float))
    loss = nn.CrossEntropyLoss(reduction="none")
    test = BatchSizeTest(name, 0.2, test_rows=6)
    keys, ids = np.array([2, 2, 2]), np.array([4, 8, 9])
    st, pos = subsampled_statistics(fm.forward, loss, params, x, y, weight, test, 5, keys,
                                    ids, 3)
    for c in range(C):
        rows = sorted(set(pos[c, :min(real[c], 6)].tolist()))
        assert len(rows) == min(real[c], 6) and max(rows) < real[c]
        g = []
        for r in rows:                                  # one autograd call per kept row
            p = {k: v[c].clone().requires_grad_(True) for k, v in params.items()}
            out = torch.func.functional_call(model, p, (x[c, r:r + 1],))
            gr = torch.autograd.grad(loss(out, y[c, r:r + 1])[0], list(p.values()))
            g.append(torch.cat([t.flatten() for t in gr]).numpy())
        sq, V, Vip, Vo = direct(np.stack(g))
        assert st.b[c] == len(rows)
        got = [st.sq_norm[c], st.var[c]] + ([st.var_ip[c], st.var_orth[c]]
                                            if name == "inner_product" else [])
        np.testing.assert_allclose(got, [sq, V] + ([Vip, Vo] if name == "inner_product" else []),
                                   rtol=1e-9)


def test_the_engine_takes_per_example_gradients_of_at_most_test_rows_rows(monkeypatch):
    fm, x, y, offsets, start = problem()
    widths = []
    real = bt.per_example_grads

    def spy(fn, params, xs, ys, loss_fn, batched=False):
        widths.append(xs.shape[1])
        return real(fn, params, xs, ys, loss_fn, batched=batched)

    monkeypatch.setattr(bt, "per_example_grads", spy)
    p = plan(offsets, [0, 1, 2, 3], 2, [40, 20, 60, 30])

    def run(test_rows):
        training = LocalTraining(batch_test=BatchSizeTest("norm", 0.5, max_batch_size=24,
                                                          test_rows=test_rows))
        return LocalTrainer(fm, make("adagrad", lr=0.05),
                            LocalProgram(training=training)).train(start, x, y, p)

    widths.clear()
    uncapped = run(None)
    assert max(widths) > 4                      # the batches do grow past the cap below
    widths.clear()
    capped = run(4)
    assert max(widths) <= 4
    assert capped.samples == uncapped.samples == p.samples()
    widths.clear()
    same = run(24)                              # a cap at b_max changes nothing, bit for bit
    assert max(widths) > 4
    for k in start:
        assert torch.equal(same.params[k], uncapped.params[k])


def test_test_rows_below_two_is_refused():
    with pytest.raises(ValueError, match="test_rows"):
        BatchSizeTest("norm", 0.1, test_rows=1)
