"""Zeroth-order estimators against independent facts: the true gradient of a quadratic (mean over
many keyed direction sets, tolerance from the estimator's known variance), exactness of central
differences on quadratics, exact query counts (a counting black box), keyed directions and the
seed trick, and the oracle on the engine (a counting trainer)."""
import numpy as np
import pytest
import torch
from torch import nn

from fedopt.engine.local import FunctionalModel, LocalTrainer
from fedopt.engine.batches import plan_batches
from fedopt.engine.program import LocalProgram
from fedopt.optim import make
from fedopt.zo.estimators import (ZerothOrder, directions, estimate, queries_per_estimate,
                                  reconstruct, scale)
from fedopt.zo.objectives import (FunctionModel, ModelBlackBox, function_dataset, spd_quadratic,
                                  spd_quadratic_rows, zero_one)

D = 8


def quadratic(seed=0):
    g = np.random.default_rng(seed)
    m = g.normal(size=(D, D))
    a = torch.tensor(m @ m.T / D + np.eye(D))
    b = torch.tensor(g.normal(size=D))
    x = torch.tensor(g.normal(size=D))
    return a, b, x, a @ x + b


class Counter:
    """The black box f(x) = ½ xᵀAx + bᵀx on [P, m, d] points, counting evaluated points."""

    def __init__(self, a, b):
        self.a, self.b, self.points = a, b, 0

    def __call__(self, pts):
        self.points += pts.shape[0] * pts.shape[1]
        return 0.5 * torch.einsum("pmi,ij,pmj->pm", pts, self.a, pts) + pts @ self.b


@pytest.mark.parametrize("name,trace_factor", [("gaussian", lambda d: d + 1),
                                               ("sphere", lambda d: d - 1)])
@pytest.mark.parametrize("q", [1, 4])
def test_central_mean_approaches_gradient_within_its_variance(name, trace_factor, q):
    a, b, x, g = quadratic()
    K = 4000                           # independent keyed direction sets (one "client" each)
    u = torch.from_numpy(directions(name, 7, 0, np.arange(K), 0, q, D))
    f = Counter(a, b)
    est, _, _ = estimate(f, x.expand(K, D), u, 0.3, "central", scale(name, q, D))
    # central differences are exact on quadratics (δ_j = u_jᵀ g) for any μ, so tr Cov is the
    # textbook (d ± 1)‖g‖²/q exactly: check it, then the mean within 4 standard errors
    tr_cov = trace_factor(D) * g.pow(2).sum() / q
    emp = (est - est.mean(0)).pow(2).sum(1).mean()
    assert abs(emp / tr_cov - 1) < 0.1
    err2 = (est.mean(0) - g).pow(2).sum()
    assert err2 < 4 * tr_cov / K
    assert f.points == K * 2 * q


@pytest.mark.parametrize("name", ["gaussian", "sphere"])
def test_forward_is_unbiased_on_a_quadratic_and_costs_q_plus_one(name):
    a, b, x, g = quadratic(1)
    K, q, mu = 4000, 3, 0.05
    u = torch.from_numpy(directions(name, 3, 5, np.arange(K), 2, q, D))
    f = Counter(a, b)
    est, delta, f0 = estimate(f, x.expand(K, D), u, mu, "forward", scale(name, q, D))
    # δ_j = u_jᵀg + (μ/2) u_jᵀAu_j exactly
    want = torch.einsum("knd,d->kn", u, g) + 0.5 * mu * torch.einsum("kni,ij,knj->kn", u, a, u)
    assert torch.allclose(delta, want, atol=1e-9)
    assert torch.allclose(f0, 0.5 * x @ a @ x + b @ x)
    var = est.var(0)                   # per coordinate; the mean is within 4 standard errors
    assert ((est.mean(0) - g).abs() < 4 * (var / K).sqrt()).all()
    assert f.points == K * (q + 1) == K * queries_per_estimate(name, "forward", q, D)


def test_coordinate_central_is_exact_and_forward_bias_is_half_mu_diag():
    a, b, x, g = quadratic(2)
    u = torch.from_numpy(directions("coordinate", 0, 0, np.arange(1), 0, 99, D))
    f = Counter(a, b)
    est, _, _ = estimate(f, x[None], u, 0.7, "central", scale("coordinate", 99, D))
    assert torch.allclose(est[0], g, atol=1e-12) and f.points == 2 * D
    f.points = 0
    mu = 1e-2
    est, _, _ = estimate(f, x[None], u, mu, "forward", 1.0)
    assert torch.allclose(est[0], g + 0.5 * mu * torch.diagonal(a), atol=1e-10)
    assert f.points == D + 1 == queries_per_estimate("coordinate", "forward", 5, D)


def test_sphere_directions_are_unit_and_keys_select_the_draw():
    u = directions("sphere", 1, 4, np.array([3, 7]), 2, 5, D)
    assert np.allclose(np.linalg.norm(u, axis=-1), 1)
    # a client's draw does not depend on who else is in the stack (chunking, Ray shards)
    assert np.array_equal(u[1], directions("sphere", 1, 4, np.array([7]), 2, 5, D)[0])
    assert np.array_equal(u, directions("sphere", 1, np.array([4, 4]), np.array([3, 7]), 2, 5, D))
    for other in [(2, 4, 2), (1, 5, 2), (1, 4, 3)]:        # seed, key, step
        seed, key, step = other
        assert not np.allclose(u, directions("sphere", seed, key, np.array([3, 7]), step, 5, D))


def test_seed_trick_reconstructs_the_clients_estimate():
    a, b, x, g = quadratic(3)
    ids = np.array([2, 9])
    u = torch.from_numpy(directions("gaussian", 11, 6, ids, 4, 5, D))
    est, delta, _ = estimate(Counter(a, b), x.expand(2, D), u, 1e-3, "forward",
                             scale("gaussian", 5, D))
    for row, cid in enumerate(ids):   # the client sends (key, δ_1..δ_q): q floats, not d
        rec = reconstruct("gaussian", 11, 6, int(cid), 4, delta[row].numpy(), D)
        assert np.allclose(rec, est[row].numpy(), atol=1e-12)


class CountingTrainer(LocalTrainer):
    """Counts the models whose loss the oracle evaluates (one query each)."""

    queries = 0
    grads = 0

    def batched_loss(self, y, batch):
        CountingTrainer.queries += next(iter(y.values())).shape[0]
        return super().batched_loss(y, batch)

    def batched_grad(self, y, batch):
        CountingTrainer.grads += 1
        return super().batched_grad(y, batch)


def value(outputs, targets):
    return outputs[:, 0]


@pytest.mark.parametrize("name,scheme,q", [("gaussian", "forward", 4), ("sphere", "central", 3),
                                           ("coordinate", "forward", 1)])
def test_oracle_on_the_engine_counts_and_matches_the_estimate(name, scheme, q):
    """A local step of the ZerothOrder oracle on a FunctionModel = one estimate of the clients'
    own functions at the shared start, with the keyed directions; every query counted."""
    d, n, steps = 4, 3, 2
    rows = torch.tensor(spd_quadratic_rows(n, d, seed=1))
    data = function_dataset(rows)
    x0 = torch.zeros(d, dtype=torch.float64)
    oracle = ZerothOrder(name, q, 1e-3, scheme)
    trainer = CountingTrainer(FunctionalModel(FunctionModel(spd_quadratic, x0)),
                              make("sgd", lr=0.1), LocalProgram(loss=value, oracle=oracle),
                              seed=5)
    CountingTrainer.queries = CountingTrainer.grads = 0
    ids = np.arange(n)
    plan = plan_batches(5, 9, ids, data.offsets.numpy(), 1, np.full(n, steps))
    res = trainer.train({"x": x0}, data.x, data.y, plan, round_idx=9, client_ids=ids)
    assert CountingTrainer.grads == 0
    assert CountingTrainer.queries == n * steps * oracle.queries_per_step(d)
    # the first step by hand: y1 = x0 − η ĝ_i(x0), directions keyed (seed 5, round 9, i, 0)
    u = torch.from_numpy(directions(name, 5, 9, ids, 0, q, d))

    def fi(pts):                      # client i's own f_i at each of its m points
        m = pts.shape[1]
        return spd_quadratic(pts.reshape(n * m, d), rows.repeat_interleave(m, 0)[:, None]
                             ).view(n, m)

    g0, _, _ = estimate(fi, x0.expand(n, d), u, 1e-3, scheme, scale(name, q, d))
    y1 = x0 - 0.1 * g0
    u1 = torch.from_numpy(directions(name, 5, 9, ids, 1, q, d))
    g1, _, _ = estimate(fi, y1, u1, 1e-3, scheme, scale(name, q, d))
    assert torch.allclose(res.params["x"], y1 - 0.1 * g1, atol=1e-12)


def test_model_black_box_and_zero_one_loss():
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    x = torch.randn(20, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (20,))
    bb = ModelBlackBox(model, zero_one, x, y)
    theta = bb.flat()
    err = float((model(x).argmax(1) != y).double().mean())
    vals = bb(torch.stack([theta, -theta])[None])
    assert vals.shape == (1, 2) and vals[0, 0].item() == pytest.approx(err)
    assert vals[0, 1].item() == pytest.approx(1 - err)      # negated logits flip every argmax
    assert bb.queries == 2 and bb.dim == 8


def test_orthogonal_directions_variance_and_exactness_at_q_equals_d():
    a, b, x, g = quadratic(4)
    u = directions("orthogonal", 2, 0, np.arange(3000), 0, 3, D)
    assert np.allclose(np.einsum("kid,kjd->kij", u, u), np.eye(3), atol=1e-12)
    ut = torch.from_numpy(u)
    est, _, _ = estimate(Counter(a, b), x.expand(3000, D), ut, 0.2, "central",
                         scale("orthogonal", 3, D))
    tr_cov = (D / 3 - 1) * g.pow(2).sum()
    assert abs((est - est.mean(0)).pow(2).sum(1).mean() / tr_cov - 1) < 0.1
    assert (est.mean(0) - g).pow(2).sum() < 4 * tr_cov / 3000
    full = torch.from_numpy(directions("orthogonal", 2, 0, np.arange(2), 0, D, D))
    exact, _, _ = estimate(Counter(a, b), x.expand(2, D), full, 0.2, "central",
                           scale("orthogonal", D, D))
    assert torch.allclose(exact, g.expand(2, D), atol=1e-10)
    with pytest.raises(ValueError, match="q <= d"):
        directions("orthogonal", 2, 0, np.arange(1), 0, D + 1, D)


def test_scale_none_is_the_unbiased_estimate_over_d():
    """FZooS's rgf baselines divide by q only: (1/q) Σ δ_j u_j is the unbiased (d/q) Σ δ_j u_j
    divided by d (the spec's "q/d times smaller" is off by q: this is the code's formula)."""
    class Ctx:
        seed, step_keys = 1, None

        def batched_loss(self, y, batch):
            return 0.5 * (y["w"] ** 2).sum(1) + y["w"][:, 0]

    from fedopt.engine.program import Batch, StepKeys
    ctx = Ctx()
    ctx.step_keys = StepKeys(0, np.arange(2), 0)
    y = {"w": torch.randn(2, 6, dtype=torch.float64)}
    batch = Batch(torch.zeros(2, 1), torch.zeros(2, 1), torch.ones(2, 1))
    unb, _ = ZerothOrder("orthogonal", 3, 1e-3).gradient(ctx, y, batch)
    none, _ = ZerothOrder("orthogonal", 3, 1e-3, scale="none").gradient(ctx, y, batch)
    assert torch.allclose(none["w"], unb["w"] / 6)


def test_max_models_chunks_the_evaluations_without_changing_the_result():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.randn(40, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (40,))
    from fedopt.data import FederatedDataset
    data = FederatedDataset(x=x, y=y, offsets=torch.tensor([0, 10, 25, 40]), x_test=x[:4],
                            y_test=y[:4], client_test=torch.zeros(4, dtype=torch.int64),
                            num_classes=3, name="t")
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    out = []
    for chunk in (None, 7):
        oracle = ZerothOrder("gaussian", 5, 1e-3, max_models=chunk)
        trainer = CountingTrainer(FunctionalModel(model), make("sgd", lr=0.1),
                                  LocalProgram(oracle=oracle), seed=2)
        plan = plan_batches(2, 0, np.arange(3), data.offsets.numpy(), 8, np.full(3, 2))
        CountingTrainer.queries = 0
        out.append(trainer.train(start, data.x, data.y, plan, round_idx=0,
                                 client_ids=np.arange(3)).params)
        assert CountingTrainer.queries == 3 * 2 * 6
    for k in out[0]:
        assert torch.allclose(out[0][k], out[1][k], atol=1e-12)
