"""The autograd-free logistic-regression gradient (:mod:`fedopt.engine.fastgrad`) is autograd's
result bit for bit — gradients, their memory layouts and the losses — and the trainer takes it
exactly where it applies, so whole trajectories are unchanged with it on or off."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedopt.config import load_config
from fedopt.engine import fastgrad
from fedopt.engine.batches import plan_batches
from fedopt.engine.local import FunctionalModel, LocalTrainer, model_params
from fedopt.engine.program import SAM, LocalProgram, mse
from fedopt.models.logreg import LogisticRegression
from fedopt.models.mlp import MLP
from fedopt.optim import functional as F
from fedopt.simulation import Simulation

DTYPES = {"float32": torch.float32, "float64": torch.float64}
_BITS = {torch.float32: torch.int32, torch.float64: torch.int64}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit patterns (torch.equal calls −0.0 and +0.0 equal, and NaN unequal to itself)."""
    return (a.dtype == b.dtype and a.shape == b.shape
            and torch.equal(a.view(_BITS[a.dtype]), b.view(_BITS[b.dtype])))


def trainer(model, fast: bool, program=None, opt=None) -> LocalTrainer:
    t = LocalTrainer(FunctionalModel(model), opt or F.SGD(lr=0.1), program)
    t.fast_gradients = fast
    return t


def stack(gen, C, k, d, dtype, permuted):
    """C stacked models; ``permuted``: W laid out [C, d, k] transposed, as after an SGD step."""
    w = torch.randn((C, d, k) if permuted else (C, k, d), generator=gen, dtype=dtype)
    w = w.transpose(1, 2) if permuted else w
    return {"linear.weight": 0.5 * w, "linear.bias": torch.randn(C, k, generator=gen, dtype=dtype)}


@settings(max_examples=120, deadline=None)
@given(C=st.integers(1, 40), B=st.integers(1, 24),
       shape=st.sampled_from([(7,), (60,), (2, 3, 5)]),
       k=st.integers(2, 12), dtype=st.sampled_from(list(DTYPES)), permuted=st.booleans(),
       zero_frac=st.sampled_from([0.0, 0.3, 1.0]), scale=st.sampled_from([1.0, 30.0]),
       seed=st.integers(0, 2**31 - 1))
def test_gradient_and_loss_are_autograds_bit_for_bit(C, B, shape, k, dtype, permuted, zero_frac,
                                                     scale, seed):
    """Random shapes, both dtypes, W contiguous or transposed, partial batches (zero weights,
    whole clients at weight 0), and large logits (saturated softmax)."""
    gen = torch.Generator().manual_seed(seed)
    dt = DTYPES[dtype]
    d = math.prod(shape)
    model = LogisticRegression(shape, k).to(dt)
    y = stack(gen, C, k, d, dt, permuted)
    x = scale * torch.randn((C, B) + shape, generator=gen, dtype=dt)
    t = torch.randint(0, k, (C, B), generator=gen)
    w = (torch.rand(C, B, generator=gen) >= zero_frac).to(dt)
    wn = w / w.sum(-1, keepdim=True).clamp_min(1.0)
    fast, slow = trainer(model, True), trainer(model, False)
    assert fastgrad.applies(y, x, t, wn)
    g_fast, loss_fast = fast._batched_grad(y, x, t, wn)
    g_slow, loss_slow = slow._batched_grad(y, x, t, wn)
    assert list(g_fast) == list(g_slow) == list(y)
    for name in y:
        assert same_bits(g_fast[name], g_slow[name]), name
        assert g_fast[name].stride() == g_slow[name].stride(), name
        assert g_fast[name].dtype == dt
    assert same_bits(loss_fast, loss_slow)


def test_gradient_is_the_closed_form():
    """An oracle independent of autograd: ∇_W = Σ_b wn_b (softmax(z_b) − e_t) x_bᵀ, ∇_b likewise,
    ℓ = Σ_b wn_b (logsumexp(z_b) − z_bt), in float64."""
    gen = torch.Generator().manual_seed(3)
    C, B, d, k = 4, 6, 5, 3
    y = stack(gen, C, k, d, torch.float64, False)
    x = torch.randn(C, B, d, generator=gen, dtype=torch.float64)
    t = torch.randint(0, k, (C, B), generator=gen)
    wn = torch.rand(C, B, generator=gen, dtype=torch.float64)
    g, loss = fastgrad.linear_cross_entropy_grad(y, x, t, wn)
    z = torch.einsum("cbd,ckd->cbk", x, y["linear.weight"]) + y["linear.bias"][:, None]
    r = wn[..., None] * (torch.softmax(z, -1) - torch.nn.functional.one_hot(t, k))
    torch.testing.assert_close(g["linear.weight"], torch.einsum("cbk,cbd->ckd", r, x))
    torch.testing.assert_close(g["linear.bias"], r.sum(1))
    lse = torch.logsumexp(z, -1) - z.gather(-1, t[..., None]).squeeze(-1)
    torch.testing.assert_close(loss, (wn * lse).sum(1))


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
def test_applies_only_to_plain_float_tensors():
    gen = torch.Generator().manual_seed(0)
    y = stack(gen, 3, 4, 5, torch.float32, False)
    x, t = torch.randn(3, 2, 5, generator=gen), torch.randint(0, 4, (3, 2), generator=gen)
    wn = torch.full((3, 2), 0.5)
    assert fastgrad.applies(y, x, t, wn)
    assert not fastgrad.applies({k: v.half() for k, v in y.items()}, x.half(), t, wn.half())
    assert not fastgrad.applies(y, x.double(), t, wn)                  # mixed dtypes
    assert not fastgrad.applies(y, x, t.int(), wn)                     # int32 labels
    assert not fastgrad.applies(y, x, t.float(), wn)                   # soft targets
    assert not fastgrad.applies({**y, "extra": y["linear.bias"]}, x, t, wn)
    assert not fastgrad.applies({"w": y["linear.weight"], "b": y["linear.bias"]}, x, t, wn)
    assert not fastgrad.applies(y, x[:, :0], t[:, :0], wn[:, :0])      # empty batch
    with torch.autograd.detect_anomaly(check_nan=True):
        assert not fastgrad.applies(y, x, t, wn)
    meta = [v.to("meta") for v in (x, t, wn)]
    assert not fastgrad.applies({k: v.to("meta") for k, v in y.items()}, *meta)  # not the CPU
    seen = []
    torch.func.vmap(lambda xi: seen.append(
        fastgrad.applies(y, xi[None], t[:1], wn[:1])) or xi)(x)          # wrapped by vmap
    assert seen == [False]


def test_eligible_only_for_builtin_logreg_with_builtin_cross_entropy():
    ce = LocalProgram().loss_fn
    logreg = LogisticRegression((5,), 3)
    assert fastgrad.eligible(logreg, ce)
    assert not fastgrad.eligible(logreg, mse)
    assert not fastgrad.eligible(logreg, lambda o, t: torch.nn.functional.cross_entropy(
        o, t, reduction="none"))
    assert not fastgrad.eligible(MLP((5,), 3, hidden=(4,)), ce)

    class Sub(LogisticRegression):
        pass

    assert not fastgrad.eligible(Sub((5,), 3), ce)
    patched = LogisticRegression((5,), 3)
    patched.batched_forward = lambda p, x: LogisticRegression.batched_forward(patched, p, x)
    assert not fastgrad.eligible(patched, ce)
    assert trainer(logreg, True)._fast_linear
    assert not trainer(logreg, True, LocalProgram(loss="mse"))._fast_linear


def _train(model, fast, program, opt, C=6, steps=5):
    """One chunk of local training with partial batches and unequal step counts."""
    gen = torch.Generator().manual_seed(1)
    counts = np.array([3, 17, 8, 25, 12, 5])[:C]
    offsets = np.concatenate([[0], np.cumsum(counts)])
    n = int(offsets[-1])
    x = torch.randn(n, 6, generator=gen)
    labels = torch.randint(0, 4, (n,), generator=gen)
    plan = plan_batches(0, 2, np.arange(C), offsets, 4,
                        np.array([steps, steps - 2, steps, 1, steps, steps - 1])[:C])
    tr = trainer(model, fast, program, opt)
    return tr.train(model_params(model), x, labels, plan, round_idx=2, client_ids=np.arange(C))


@pytest.mark.parametrize("program", [LocalProgram(), LocalProgram(prox_mu=0.2),
                                     LocalProgram(oracle=SAM(0.05)),
                                     LocalProgram(oracle=SAM(0.05, alpha=0.5, normalize=False))],
                         ids=["plain", "prox", "sam", "sam-mixed"])
@pytest.mark.parametrize("opt", [F.SGD(lr=0.3), F.SGD(lr=0.3, momentum=0.9, weight_decay=1e-3),
                                 F.Adam(lr=0.01)], ids=["sgd", "sgd-momentum", "adam"])
def test_local_training_is_unchanged_and_takes_the_fast_path(program, opt, monkeypatch):
    torch.manual_seed(0)
    model = LogisticRegression((6,), 4)
    calls = []
    real = fastgrad.linear_cross_entropy_grad
    monkeypatch.setattr(fastgrad, "linear_cross_entropy_grad",
                        lambda *a: calls.append(1) or real(*a))
    on = _train(model, True, program, opt)
    assert calls, "the fast path was not taken"
    n_calls = len(calls)
    off = _train(model, False, program, opt)
    assert len(calls) == n_calls, "the fast path ran with fast_gradients off"
    for k in on.params:
        assert same_bits(on.params[k], off.params[k]), k
    assert same_bits(on.mean_loss, off.mean_loss)


def test_mlp_and_user_loss_never_take_the_fast_path(monkeypatch):
    monkeypatch.setattr(fastgrad, "linear_cross_entropy_grad",
                        lambda *a: pytest.fail("fast path taken"))
    torch.manual_seed(0)
    _train(MLP((6,), 4, hidden=(5,)), True, LocalProgram(), F.SGD(lr=0.1))
    user = LocalProgram(loss=lambda o, t: torch.nn.functional.cross_entropy(o, t,
                                                                              reduction="none"))
    _train(LogisticRegression((6,), 4), True, user, F.SGD(lr=0.1))


def _run(cfg, fast, rounds):
    old = LocalTrainer.fast_gradients
    LocalTrainer.fast_gradients = fast
    try:
        sim = Simulation(load_config(cfg))
        rows = [sim.step() for _ in range(rounds)]
        return sim.state.params, rows
    finally:
        LocalTrainer.fast_gradients = old


@pytest.mark.parametrize("alg,client,dtype", [
    ({"name": "fedavg"}, {"local_steps": 6}, "float32"),
    ({"name": "fedprox", "mu": 0.1}, {"local_epochs": 2}, "float32"),
    ({"name": "scaffold"}, {"local_steps": 5}, "float64"),
    ({"name": "feddyn"}, {"local_epochs": 1}, "float64"),
], ids=["fedavg", "fedprox-epochs", "scaffold-f64", "feddyn-epochs-f64"])
def test_simulation_trajectory_is_bitwise_the_same(alg, client, dtype, monkeypatch):
    """A whole short run (sampling, local steps with partial batches, aggregation, server
    step, evaluation) with the fast path forced off vs on (and taken)."""
    cfg = {"seed": 3, "data": {"name": "synthetic", "num_clients": 12, "min_samples": 5,
                               "max_samples": 40, "alpha": 1.0, "beta": 1.0},
           "model": {"name": "logreg"},
           "algorithm": {**alg, "rounds": 3, "clients_per_round": 8},
           "client": {**client, "batch_size": 7, "optimizer": {"name": "sgd", "lr": 0.05}},
           "executor": {"dtype": dtype, "chunk_size": 5}, "eval_every": 1}
    calls = []
    real = fastgrad.linear_cross_entropy_grad
    monkeypatch.setattr(fastgrad, "linear_cross_entropy_grad",
                        lambda *a: calls.append(1) or real(*a))
    p_on, rows_on = _run(cfg, True, 3)
    assert calls
    p_off, rows_off = _run(cfg, False, 3)
    for k in p_on:
        assert same_bits(p_on[k], p_off[k]), k
    assert rows_on == rows_off


def test_non_contiguous_row_weights_are_autograds_bit_for_bit():
    """wn laid out [B, C] transposed (applies() accepts any layout): autograd's ViewBackward
    reshapes its gradient, so the autograd-free path must not need a contiguous wn either."""
    gen = torch.Generator().manual_seed(5)
    C, B, d, k = 3, 4, 6, 5
    y = stack(gen, C, k, d, torch.float64, False)
    x = torch.randn(C, B, d, generator=gen, dtype=torch.float64)
    t = torch.randint(0, k, (C, B), generator=gen)
    wn = torch.rand(B, C, generator=gen, dtype=torch.float64).T
    assert not wn.is_contiguous() and fastgrad.applies(y, x, t, wn)
    model = LogisticRegression((d,), k).to(torch.float64)
    g_fast, loss_fast = trainer(model, True)._batched_grad(y, x, t, wn)
    g_slow, loss_slow = trainer(model, False)._batched_grad(y, x, t, wn)
    for name in y:
        assert same_bits(g_fast[name], g_slow[name]), name
    assert same_bits(loss_fast, loss_slow)
