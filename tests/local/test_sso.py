"""SSO: m = 1 is SGD bit for bit (engine and plain torch), the surrogate's value and gradient at
θ_t, its target form, the least-squares closed form, majorization, batched == per client."""
import numpy as np
import pytest
import torch
from torch import nn

from fedopt.engine.batches import plan_batches
from fedopt.engine.local import FunctionalModel, LocalTrainer
from fedopt.engine.program import LocalProgram, cross_entropy, mse
from fedopt.local.config import LocalTraining
from fedopt.local.sso import SSO, sso_step, surrogate_value, targets
from fedopt.optim import make


def problem(clients=3, rows=9, seed=0, hidden=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(clients * rows, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (clients * rows,), generator=g)
    offsets = np.arange(clients + 1) * rows
    torch.manual_seed(seed)
    model = (nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)) if hidden
             else nn.Linear(4, 3)).double()
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    return model, x, y, offsets, start


def sso_program(m, eta=2.0, prox=0.0):
    return LocalProgram(prox_mu=prox, training=LocalTraining(sso_steps=m, sso_eta=eta))


@pytest.mark.parametrize("prox", [0.0, 0.3])
def test_m1_is_plain_sgd_bit_for_bit_in_the_engine(prox):
    model, x, y, offsets, start = problem()
    plan = plan_batches(0, 4, np.arange(3), offsets, 4, np.array([5, 7, 3]),
                        dtype=torch.float64)
    fm = FunctionalModel(model)
    opt = make("sgd", lr=0.3)
    plain = LocalTrainer(fm, opt, LocalProgram(prox_mu=prox)).train(start, x, y, plan)
    for eta in (0.5, 2.0, 7.0):
        got = LocalTrainer(fm, opt, sso_program(1, eta, prox)).train(start, x, y, plan)
        for k in start:
            assert torch.equal(got.params[k], plain.params[k])
        assert torch.equal(got.mean_loss, plain.mean_loss)
    more = LocalTrainer(fm, opt, sso_program(5)).train(start, x, y, plan)
    assert not torch.equal(more.params["0.weight"], plain.params["0.weight"])


def test_m1_is_plain_sgd_in_plain_torch():
    torch.manual_seed(1)
    a = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    b = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    b.load_state_dict(a.state_dict())
    x, t = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    ce = lambda o, tt: nn.functional.cross_entropy(o, tt, reduction="none")  # noqa: E731
    sso = SSO(a, ce, lambda p: torch.optim.SGD(p, lr=0.2), inner_steps=1, eta=3.0)
    opt = torch.optim.SGD(b.parameters(), lr=0.2)
    for _ in range(3):
        sso.step(x, t)
        opt.zero_grad()
        nn.functional.cross_entropy(b(x), t).backward()
        opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-15)


def test_surrogate_value_gradient_and_target_form():
    model, x, y, offsets, start = problem(clients=1)
    fm = FunctionalModel(model)
    xb, yb = x[None, :6], y[None, :6]
    w = torch.full((1, 6), 1 / 6, dtype=torch.float64)
    stack = {k: v[None] for k, v in start.items()}
    z = fm.batched_forward(stack, xb).detach()

    def client_loss(out):
        return (cross_entropy(out.flatten(0, 1), yb.flatten()).view(1, 6) * w).sum(1)

    gw, loss = targets(z, client_loss)
    eta = 1.5

    def g_of(p):
        return surrogate_value(fm.batched_forward(p, xb), z, gw, w, loss, eta)

    leaves = {k: v.clone().requires_grad_(True) for k, v in stack.items()}
    val = g_of(leaves)
    torch.testing.assert_close(val, loss, rtol=0, atol=1e-15)        # g_t(θ_t) = L_B(θ_t)
    grads = torch.autograd.grad(val.sum(), list(leaves.values()))
    leaves2 = {k: v.clone().requires_grad_(True) for k, v in stack.items()}
    lg = torch.autograd.grad(client_loss(fm.batched_forward(leaves2, xb)).sum(),
                             list(leaves2.values()))
    for a, b in zip(grads, lg):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)          # ∇g_t(θ_t) = ∇L_B(θ_t)
    # g_t(ω) − (1/(2η)) Σ w‖f − z̃‖² is the same constant at random ω (z̃ = z − η G)
    zt = z - eta * gw / w[..., None]
    consts = []
    for s in range(3):
        p = {k: v + 0.3 * torch.randn_like(v, generator=None) for k, v in stack.items()}
        f = fm.batched_forward(p, xb)
        consts.append(float(g_of(p) - (w[..., None] * (f - zt) ** 2).sum() / (2 * eta)))
    assert max(consts) - min(consts) < 1e-12


def test_least_squares_closed_form_with_eta_half():
    """f = Xθ, ℓ = (z − y)² (L_z = 2), η = 1/2: z̃ = y, so the exact inner solve is lstsq."""
    g = torch.Generator().manual_seed(3)
    X = torch.randn(12, 3, generator=g, dtype=torch.float64)
    t = torch.randn(12, generator=g, dtype=torch.float64)
    lin = nn.Linear(3, 1, bias=False).double()
    fm = FunctionalModel(lin)
    w = torch.full((1, 12), 1 / 12, dtype=torch.float64)
    theta = {"weight": torch.randn(1, 1, 3, generator=g, dtype=torch.float64)}
    out, _ = sso_step(fm.batched_forward,
                      lambda z: (mse(z.flatten(0, 1), t).view(1, 12) * w).sum(1),
                      theta, X[None], w, make("sgd", lr=0.3), 600, 0.5)
    want = torch.linalg.lstsq(X, t[:, None]).solution[:, 0]
    torch.testing.assert_close(out["weight"][0, 0], want, rtol=0, atol=1e-9)


def test_surrogate_majorizes_cross_entropy_at_eta_two():
    model, x, y, offsets, start = problem(clients=1, hidden=False)
    fm = FunctionalModel(model)
    xb, yb = x[None, :8], y[None, :8]
    w = torch.full((1, 8), 1 / 8, dtype=torch.float64)
    stack = {k: v[None] for k, v in start.items()}
    z = fm.batched_forward(stack, xb).detach()

    def client_loss(out):
        return (cross_entropy(out.flatten(0, 1), yb.flatten()).view(1, 8) * w).sum(1)

    gw, loss = targets(z, client_loss)
    gen = torch.Generator().manual_seed(0)
    for s in range(20):
        p = {k: v + torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in stack.items()}
        f = fm.batched_forward(p, xb)
        assert float(surrogate_value(f, z, gw, w, loss, 2.0)) >= float(client_loss(f)) - 1e-12


def test_batched_over_clients_equals_per_client_runs():
    model, x, y, offsets, start = problem(clients=3)
    fm = FunctionalModel(model)
    steps = np.array([4, 6, 2])
    tr = LocalTrainer(fm, make("adam", lr=0.05), sso_program(4))
    together = tr.train(start, x, y, plan_batches(0, 1, np.arange(3), offsets, 4, steps,
                                                  dtype=torch.float64))
    for i in range(3):
        one = tr.train(start, x, y, plan_batches(0, 1, np.array([i]), offsets, 4, steps[i:i + 1],
                                                 dtype=torch.float64))
        for k in start:
            torch.testing.assert_close(together.params[k][i], one.params[k][0], rtol=0,
                                       atol=1e-13)


@pytest.mark.parametrize("kw, field", [({"inner_steps": 0, "eta": 1.0}, "inner_steps"),
                                       ({"inner_steps": 2, "eta": 0.0}, "eta"),
                                       ({"inner_steps": 2, "eta": float("inf")}, "eta")])
def test_plain_sso_errors_name_the_field(kw, field):
    with pytest.raises(ValueError, match=f"^{field}: "):
        SSO(nn.Linear(2, 2), nn.functional.cross_entropy, torch.optim.SGD, **kw)
