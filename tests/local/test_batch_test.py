"""AdAdaGrad's tests against a direct per-item computation, invariances, the least-squares closed
form, the growth rule's monotonicity and cap, batched == per client, and the torch helper."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from fedopt.local.batch_test import (AdaptiveBatchSize, BatchSizeTest, BatchStats,
                                     batch_statistics, per_example_grads)


def direct(g: np.ndarray) -> tuple[float, float, float, float]:
    """(‖ḡ‖², V, V_ip, V_orth) of per-example gradients g [b, d] by plain loops."""
    b = g.shape[0]
    gbar = g.mean(0)
    sq = float(gbar @ gbar)
    V = sum(float((g[i] - gbar) @ (g[i] - gbar)) for i in range(b)) / (b - 1)
    q = np.array([g[i] @ gbar for i in range(b)])
    Vip = float(((q - q.mean()) ** 2).sum() / (b - 1))
    o = np.stack([g[i] - q[i] / sq * gbar for i in range(b)])
    Vo = float(((o - o.mean(0)) ** 2).sum() / (b - 1))
    return sq, V, Vip, Vo


def test_statistics_equal_the_direct_computation_and_exclude_padding():
    rng = np.random.default_rng(0)
    C, W, d = 3, 7, 5
    g = rng.normal(size=(C, W, d)) + rng.normal(size=(C, 1, d))
    real = np.array([7, 4, 2])
    mask = (np.arange(W)[None] < real[:, None]).astype(float)
    g_pad = g.copy()
    g_pad[mask == 0] = 1e6                      # padding rows must not count
    split = {"a": torch.tensor(g_pad[..., :2]), "b": torch.tensor(g_pad[..., 2:])}
    st = batch_statistics(split, torch.tensor(mask))
    for c in range(C):
        sq, V, Vip, Vo = direct(g[c, :real[c]])
        assert st.b[c] == real[c]
        np.testing.assert_allclose([st.sq_norm[c], st.var[c], st.var_ip[c], st.var_orth[c]],
                                   [sq, V, Vip, Vo], rtol=1e-10)
        # oracle 1: V = (Σ‖g_i‖² − b‖ḡ‖²)/(b − 1)
        gi = g[c, :real[c]]
        alt = ((gi ** 2).sum() - real[c] * sq) / (real[c] - 1)
        assert math.isclose(float(st.var[c]), alt, rel_tol=1e-9)


def test_blockwise_is_the_per_tensor_sum_and_whole_vector_for_one_tensor():
    rng = np.random.default_rng(1)
    g = rng.normal(size=(1, 6, 4))
    one = batch_statistics(torch.tensor(g))
    assert torch.allclose(batch_statistics(torch.tensor(g), blockwise=True).var_ip, one.var_ip)
    split = {"a": torch.tensor(g[..., :2]), "b": torch.tensor(g[..., 2:])}
    blk = batch_statistics(split, blockwise=True)
    parts = [direct(g[0, :, :2]), direct(g[0, :, 2:])]
    np.testing.assert_allclose(float(blk.var_ip[0]), parts[0][2] + parts[1][2], rtol=1e-10)
    np.testing.assert_allclose(float(blk.var_orth[0]), parts[0][3] + parts[1][3], rtol=1e-10)
    np.testing.assert_allclose(float(blk.var[0]), float(one.var[0]), rtol=1e-12)
    assert not np.isclose(float(blk.var_ip[0]), float(one.var_ip[0]))


def test_invariances_scale_identical_and_parallel_gradients():
    rng = np.random.default_rng(2)
    g = torch.tensor(rng.normal(size=(2, 9, 6)))
    for name in ("norm", "inner_product"):
        t = BatchSizeTest(name, eta=0.3)
        a = t.proposed(batch_statistics(g))
        b = t.proposed(batch_statistics(-3.7 * g))
        assert torch.equal(a, b)
    same = torch.tensor(rng.normal(size=(1, 1, 6))).expand(1, 5, 6).clone()
    st = batch_statistics(same)
    assert float(st.var) == pytest.approx(0, abs=1e-24) and float(st.var_ip) < 1e-20
    assert int(BatchSizeTest("norm").next_batch_size(torch.tensor([5]), st, 100)) == 5
    par = torch.tensor(rng.normal(size=(6,)))[None, None] * torch.tensor(
        rng.uniform(0.5, 2, size=(1, 8, 1)))
    assert float(batch_statistics(par).var_orth) < 1e-20


def test_least_squares_closed_form_of_the_per_example_gradients_and_next_size():
    rng = np.random.default_rng(3)
    A, yv, x = rng.normal(size=(10, 3)), rng.normal(size=10), rng.normal(size=3)
    lin = nn.Linear(3, 1, bias=False).double()
    params = {"weight": torch.tensor(x[None])}
    pe = per_example_grads(lin, params, torch.tensor(A), torch.tensor(yv),
                           lambda o, t: 0.5 * (o[:, 0] - t) ** 2)
    g = A * (A @ x - yv)[:, None]                         # a_i (a_iᵀx − y_i)
    np.testing.assert_allclose(pe["weight"][:, 0].numpy(), g, rtol=1e-12)
    sq, V, _, _ = direct(g)
    eta = 0.2
    want = min(64, max(10, math.ceil(V / (eta ** 2 * sq))))
    st = batch_statistics({"w": pe["weight"][None]})
    assert int(BatchSizeTest("norm", eta).next_batch_size(torch.tensor([10]), st, 64)) == want


def test_batch_sizes_never_shrink_stop_at_the_max_and_skip_there():
    rng = np.random.default_rng(4)
    test = BatchSizeTest("inner_product", eta=0.5, nu=1.0)
    b = torch.full((4,), 2, dtype=torch.int64)
    cap = torch.tensor([8, 50, 1000, 3])
    for _ in range(30):
        g = torch.tensor(rng.normal(size=(4, 6, 3)) * rng.uniform(0.01, 5))
        nxt = test.next_batch_size(b, batch_statistics(g), cap)
        assert (nxt >= b).all() and (nxt <= torch.maximum(cap, b)).all()
        b = nxt
    assert b[0] == 8 and b[3] == 3
    # ‖ḡ‖² ≈ 0 jumps to the cap; fewer than two rows keep b
    st = BatchStats(torch.tensor([5.0, 1.0]), torch.tensor([0.0, 1.0]), torch.ones(2),
                    torch.ones(2), torch.ones(2))
    assert BatchSizeTest().next_batch_size(torch.tensor([4, 4]), st, 77).tolist() == [77, 4]


def test_batched_over_clients_equals_per_client():
    rng = np.random.default_rng(5)
    g = torch.tensor(rng.normal(size=(5, 8, 4)))
    mask = torch.tensor((rng.uniform(size=(5, 8)) < 0.7).astype(float))
    mask[:, :2] = 1
    t = BatchSizeTest("inner_product", eta=0.4)
    b = torch.tensor([2, 3, 4, 5, 6])
    together = t.next_batch_size(b, batch_statistics(g, mask), 100)
    alone = [int(t.next_batch_size(b[i:i + 1], batch_statistics(g[i:i + 1], mask[i:i + 1]), 100))
             for i in range(5)]
    assert together.tolist() == alone


def test_torch_helper_turns_the_test_into_the_next_batch_size():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = torch.randn(12, 4, dtype=torch.float64), torch.randint(0, 3, (12,))
    loss = lambda o, t: nn.functional.cross_entropy(o, t, reduction="none")  # noqa: E731
    sizer = AdaptiveBatchSize(BatchSizeTest("norm", eta=0.05, max_batch_size=500), 12)
    got = sizer.update(model, loss, x, y)
    rows = []
    for i in range(12):
        model.zero_grad()
        loss(model(x[i:i + 1]), y[i:i + 1]).sum().backward()
        rows.append(torch.cat([p.grad.flatten() for p in model.parameters()]).numpy().copy())
    sq, V, _, _ = direct(np.stack(rows))
    assert got == min(500, max(12, math.ceil(V / (0.05 ** 2 * sq))))
    with pytest.raises(ValueError, match="eta"):
        BatchSizeTest("norm", eta=0.0)


def test_norm_only_statistics_skip_the_inner_products():
    g = torch.tensor(np.random.default_rng(6).normal(size=(2, 5, 3)))
    full, lean = batch_statistics(g), batch_statistics(g, inner_product=False)
    assert torch.equal(full.var, lean.var) and torch.equal(full.sq_norm, lean.sq_norm)
    assert torch.isnan(lean.var_ip).all()
    t = BatchSizeTest("norm", 0.3)
    assert torch.equal(t.next_batch_size(torch.tensor([2, 2]), full, 50),
                       t.next_batch_size(torch.tensor([2, 2]), lean, 50))


def test_nan_statistics_keep_the_batch_size():
    g = torch.tensor(np.random.default_rng(7).normal(size=(2, 4, 3)))
    g[0, 1, 0] = float("nan")
    nxt = BatchSizeTest("norm", 0.1).next_batch_size(torch.tensor([3, 3]), batch_statistics(g), 50)
    assert nxt[0] == 3 and 3 <= nxt[1] <= 50


def test_torch_helper_refuses_a_first_batch_of_one():
    """From b = 1 the statistics are undefined and the size would stay 1 forever."""
    with pytest.raises(ValueError, match="^batch_size: must be >= 2"):
        AdaptiveBatchSize(BatchSizeTest("norm"), 1)
