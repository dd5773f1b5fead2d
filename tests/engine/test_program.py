"""The local program: its pieces against hand computations, and the trainer running it."""
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from fedopt.engine.batches import plan_batches
from fedopt.engine.local import FunctionalModel, LocalTrainer
from fedopt.engine.program import (SAM, Autograd, ClipUpdateNorm, LocalProgram, UpdateInfo,
                                   accuracy, check_shippable, cross_entropy, mse)
from fedopt.optim import make


def test_clip_update_norm_matches_a_hand_computation():
    """Δ_i ← Δ_i min(1, c/‖Δ_i‖), ‖·‖ over every parameter of client i."""
    delta = {"w": torch.tensor([[3.0, 0.0], [0.3, 0.0], [0.0, 0.0]], dtype=torch.float64),
             "b": torch.tensor([[4.0], [0.4], [0.0]], dtype=torch.float64)}
    out = ClipUpdateNorm(1.0).apply(delta, UpdateInfo(np.arange(3), 0, 0))
    # client 0: norm 5 -> scaled by 1/5; client 1: norm 0.5 <= 1, unchanged; client 2: zero
    torch.testing.assert_close(out["w"], torch.tensor([[0.6, 0.0], [0.3, 0.0], [0.0, 0.0]],
                                                      dtype=torch.float64), rtol=0, atol=1e-15)
    torch.testing.assert_close(out["b"], torch.tensor([[0.8], [0.4], [0.0]], dtype=torch.float64),
                               rtol=0, atol=1e-15)
    assert torch.equal(delta["w"][0], torch.tensor([3.0, 0.0], dtype=torch.float64))  # not in place
    with pytest.raises(ValueError, match="max_norm"):
        ClipUpdateNorm(0.0)


def _problem(seed=0, clients=3, rows=6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(clients * rows, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (clients * rows,), generator=g)
    offsets = np.arange(clients + 1) * rows
    torch.manual_seed(seed)
    model = nn.Linear(4, 3).double()
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    plan = plan_batches(0, 0, np.arange(clients), offsets, 3, np.full(clients, 4),
                        dtype=torch.float64)
    return model, x, y, start, plan


def test_trainer_applies_the_postprocessors_to_each_client_update():
    model, x, y, start, plan = _problem()
    plain = LocalTrainer(FunctionalModel(model), make("sgd", lr=0.5)).train(start, x, y, plan)
    clip = LocalProgram(postprocess=(ClipUpdateNorm(0.05),))
    got = LocalTrainer(FunctionalModel(model), make("sgd", lr=0.5), clip).train(start, x, y, plan)
    delta = {k: plain.params[k] - start[k] for k in start}
    norm = torch.sqrt(sum(d.pow(2).flatten(1).sum(1) for d in delta.values()))
    assert (norm > 0.05).all()
    for k in start:
        expected = start[k] + delta[k] * (0.05 / norm).view(-1, *[1] * (delta[k].ndim - 1))
        torch.testing.assert_close(got.params[k], expected, rtol=0, atol=1e-14)
    # a bound above every norm leaves the bits as they are
    loose = LocalProgram(postprocess=(ClipUpdateNorm(1e6),))
    same = LocalTrainer(FunctionalModel(model), make("sgd", lr=0.5), loose).train(start, x, y, plan)
    for k in start:
        torch.testing.assert_close(same.params[k], plain.params[k], rtol=0, atol=1e-15)


def test_sam_oracle_is_the_quasi_gradient_and_rho_zero_is_autograd():
    model, x, y, start, plan = _problem(1)
    fm = FunctionalModel(model)
    trainer = LocalTrainer(fm, make("sgd", lr=0.1))
    C = 3
    ys = {k: v.unsqueeze(0).expand((C,) + v.shape).clone() for k, v in start.items()}
    rows = plan.rows[0]
    xb, yb = x[rows], y[rows]
    wn = plan.weight[0] / plan.weight[0].sum(-1, keepdim=True)
    from fedopt.engine.program import Batch
    batch = Batch(xb, yb, wn)
    g1, loss = Autograd().gradient(trainer, ys, batch)
    g0, _ = SAM(0.0).gradient(trainer, ys, batch)
    for k in g1:
        assert torch.equal(g0[k], g1[k])
    rho, alpha = 0.2, 0.3
    g, _ = SAM(rho, alpha, normalize=True).gradient(trainer, ys, batch)
    for i in range(C):   # one client at a time, by torch autograd
        def grad_at(p):
            leaves = {k: v.detach().requires_grad_(True) for k, v in p.items()}
            out = torch.func.functional_call(model, leaves, (xb[i],))
            li = (cross_entropy(out, yb[i]) * wn[i]).sum()
            return dict(zip(leaves, torch.autograd.grad(li, list(leaves.values()))))
        p = {k: v[i] for k, v in ys.items()}
        a = grad_at(p)
        n = torch.sqrt(sum(v.pow(2).sum() for v in a.values()))
        b = grad_at({k: p[k] + rho * a[k] / n for k in p})
        for k in p:
            torch.testing.assert_close(g[k][i], (1 - alpha) * a[k] + alpha * b[k],
                                       rtol=1e-12, atol=1e-14)


def test_builtin_losses_and_metrics():
    out = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    assert accuracy(out, torch.tensor([0, 0])).tolist() == [1.0, 0.0]
    torch.testing.assert_close(mse(out, torch.tensor([[1.0, 0.0], [0.0, 0.0]])),
                               torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(mse(out[:, :1], torch.tensor([1.0, 3.0])), torch.tensor([1.0, 9.0]))


def _user_loss(outputs, targets):
    return (outputs.squeeze(-1) - targets).abs()


def test_program_validation_defaults_and_pickling():
    p = LocalProgram()
    assert p.loss_fn is cross_entropy and list(p.metric_fns()) == ["accuracy"]
    assert list(p.metric_fns(regression=True)) == []
    assert p.for_task(True).loss == "mse" and p.for_task(True).metrics == ()
    q = LocalProgram(loss=_user_loss, metrics={"mae": _user_loss, "mse": "mse"}, prox_mu=0.1,
                     oracle=SAM(0.1, 0.5), postprocess=[ClipUpdateNorm(1.0)])
    assert q.metrics == (("mae", _user_loss), ("mse", "mse"))
    assert pickle.loads(pickle.dumps(q)) == q
    check_shippable(q)
    with pytest.raises(ValueError, match="loss: unknown name 'hinge'"):
        LocalProgram(loss="hinge")
    with pytest.raises(ValueError, match="metrics.top5"):
        LocalProgram(metrics=["top5"])
    with pytest.raises(ValueError, match="prox_mu"):
        LocalProgram(prox_mu=-1.0)
    with pytest.raises(ValueError, match="oracle"):
        LocalProgram(oracle="sam")
    with pytest.raises(ValueError, match=r"postprocess\[0\]"):
        LocalProgram(postprocess=(lambda d, i: d,))
    with pytest.raises(ValueError, match="sam_alpha"):
        SAM(0.1, alpha=2.0)
    import threading
    lock = threading.Lock()
    bad = LocalProgram(metrics={"locked": lambda o, t: o.sum(-1) if lock else o})
    with pytest.raises(ValueError, match="metrics.locked: cannot be shipped"):
        check_shippable(bad)
