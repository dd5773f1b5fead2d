"""Biased vs unbiased asynchronous aggregation on federated quadratics with closed-form optima
(federated.md §2.6 and §5 oracle 15).

Client i has F_i(w) = ½‖w − c_i‖²; K local gradient steps with lr η from x give exactly
y_i = c_i + (1 − η)^K (x − c_i), so Δ_i(x) = γ (c_i − x) with γ = 1 − (1 − η)^K. If client i
carries average aggregation weight q_i, the fixed point of the scheme is Σ q_i c_i / Σ q_i:
with the unbiased weights (E[ω_i] = p_i) that is the federated optimum Σ p_i c_i; with
identical weights under heterogeneous compute times it is pulled towards the fast clients.
"""
import numpy as np
import pytest
import torch

from fedopt.algorithms.async_schedule import SchedulePolicy
from fedopt.algorithms.asynchronous import AsyncFederated
from fedopt.engine.contract import RoundOutput, SharedStart

TAUS = [1.0, 0.75, 0.5, 0.25]               # F-75 grid: client 3 is 4x faster than client 0
CENTERS = np.array([[0.0, 4.0], [1.0, 0.0], [2.0, -1.0], [3.0, 2.0]])


class QuadraticClients:
    """Executor stand-in: exact local gradient descent on F_i(w) = ½‖w − c_i‖²."""

    def __init__(self, centers, lr, steps):
        self.c = torch.as_tensor(centers, dtype=torch.float64)
        self.contraction = (1.0 - lr) ** steps

    def local(self, x, ids):
        c = self.c[torch.as_tensor(ids)]
        return c + self.contraction * (x.unsqueeze(0) - c)

    def local_from(self, x, ids):
        """y_j from stacked (or broadcast [1, d]) starts x."""
        c = self.c[torch.as_tensor(ids)]
        return c + self.contraction * (x - c)

    on_nonfinite = "error"

    def job_samples(self, client_ids):
        return np.zeros(len(client_ids), dtype=np.int64)

    def run_jobs(self, starts, client_ids, keys, weights, optimizer=None, correction=None,
                 keep_local=False):
        x = (starts.params["w"].unsqueeze(0) if isinstance(starts, SharedStart)
             else starts["w"])
        y = self.local_from(x, client_ids)
        w = torch.as_tensor(np.asarray(weights), dtype=torch.float64)
        return RoundOutput(delta_sum={"w": (w[:, None] * (y - x)).sum(0)},
                           weight_sum=float(w.sum()), loss_sum=0.0, samples=0,
                           updates=len(client_ids), local_params={"w": y} if keep_local else None,
                           local_loss=np.zeros(len(client_ids)) if keep_local else None)


def algorithm(policy, weights, participation="auto", **kw):
    return AsyncFederated(np.ones(4, dtype=np.int64), policy,
                          {"speed": {"name": "list", "values": TAUS}},
                          aggregation_weights=weights, importance="uniform",
                          participation=participation, **kw)


def run(alg, steps, lr=0.02, local_steps=1, tail=1000):
    ex = QuadraticClients(CENTERS, lr, local_steps)
    state = alg.init({"w": torch.zeros(2, dtype=torch.float64)})
    xs = []
    for _ in range(steps):
        state, _ = alg.run_round(state, ex)
        xs.append(state.params["w"].numpy().copy())
    return np.mean(xs[-tail:], axis=0), state


OPTIMUM = CENTERS.mean(0)                  # argmin Σ_i (1/N) F_i
RATES = 1 / np.array(TAUS)
FAST_BIASED = (RATES[:, None] * CENTERS).sum(0) / RATES.sum()   # Σ q_i c_i, q_i ∝ 1/τ_i


def test_the_two_fixed_points_are_far_apart():
    assert np.linalg.norm(FAST_BIASED - OPTIMUM) > 0.5


def test_async_identical_weights_converge_to_the_fast_clients_surrogate():
    # exact: per arrival each model version starts exactly one job, so once the orbit is
    # periodic (100 steps for these τ) summing θ^{n+1} − θ^n = γ (c_i(n) − θ^{ρ(n)}) over a
    # period gives mean(θ) = Σ_i π_i c_i with π_i the arrival share ∝ 1/τ_i
    x, _ = run(algorithm(SchedulePolicy(4, buffer_size=1), "uniform"), 2000)
    np.testing.assert_allclose(x, FAST_BIASED, atol=1e-6)
    assert np.linalg.norm(x - OPTIMUM) > 0.55


@pytest.mark.parametrize("participation", ["expected", "empirical"])
def test_async_unbiased_weights_converge_to_the_federated_optimum(participation):
    x, _ = run(algorithm(SchedulePolicy(4, buffer_size=1), "unbiased", participation), 2000)
    np.testing.assert_allclose(x, OPTIMUM, atol=0.02)     # O(γ) orbit around the optimum


def test_fedfix_unbiased_weights_remove_the_bias_and_identical_do_not():
    fix = SchedulePolicy(4, interval=0.25)
    x, _ = run(algorithm(fix, "unbiased"), 1000, tail=300)        # d_i = p_i ⌈τ_i/Δt⌉
    np.testing.assert_allclose(x, OPTIMUM, atol=0.01)
    y, _ = run(algorithm(fix, "uniform"), 1000, tail=300)
    assert np.linalg.norm(y - OPTIMUM) > 0.3


def test_fedbuff_identical_weights_follow_participation_and_unbiased_the_optimum():
    buff = SchedulePolicy(4, buffer_size=2)
    x, state = run(algorithm(buff, "uniform"), 2000)
    f = state.extra["async"]["sched"]["participations"].numpy().astype(float)
    surrogate = (f[:, None] * CENTERS).sum(0) / f.sum()              # q_i ∝ participations
    np.testing.assert_allclose(x, surrogate, atol=0.005)
    assert np.linalg.norm(surrogate - OPTIMUM) > 0.3
    y, _ = run(algorithm(buff, "unbiased", "empirical"), 2000)       # d_i = p_i / f_i
    np.testing.assert_allclose(y, OPTIMUM, atol=0.005)


def test_delta_form_versus_mixing_with_a_stale_base():                # oracle 15
    # two clients, τ = (1, 1/4): client 1 arrives at steps 0, 1, 2 (staleness 0); at t = 1
    # both arrive, client 0 first (lowest id) as step 3 with start version 0 (staleness 3).
    c = np.array([[4.0, 0.0], [0.0, 2.0]])
    lr, K, alpha = 0.5, 2, 0.3
    g = 1 - (1 - lr) ** K

    def local(x, i):
        return c[i] + (1 - g) * (x - c[i])

    for combine in ("delta", "model"):
        alg = AsyncFederated(np.ones(2, dtype=np.int64), SchedulePolicy(2, buffer_size=1),
                             {"speed": {"name": "list", "values": [1.0, 0.25]}},
                             aggregation_weights="uniform", combine=combine, mixing_alpha=alpha)
        ex = QuadraticClients(c, lr, K)
        state = alg.init({"w": torch.tensor([1.0, 1.0], dtype=torch.float64)})
        theta = [np.array([1.0, 1.0])]
        for n in range(4):
            state, stats = alg.run_round(state, ex)
            theta.append(state.params["w"].numpy().copy())
        # by hand: steps 0..2 are client 1 on the fresh model
        x = theta[0]
        for n in range(3):
            y = local(x, 1)
            x = x + (y - x) if combine == "delta" else x + alpha * (y - x)
            np.testing.assert_allclose(theta[n + 1], x, rtol=1e-14)
        y0 = local(theta[0], 0)                                      # computed at θ^0
        expect = theta[3] + (y0 - theta[0]) if combine == "delta" else theta[3] + alpha * (y0 - theta[3])
        np.testing.assert_allclose(theta[4], expect, rtol=1e-14)
        assert stats["staleness_max"] == 3
    wrong = theta[3] + alpha * (local(theta[0], 0) - theta[0])        # not θ^n + α(y − θ^ρ)
    assert np.linalg.norm(theta[4] - wrong) > 1e-3
