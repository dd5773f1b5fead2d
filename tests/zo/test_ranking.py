"""ZO-RankSGD: the estimator's mean is (2/√π)·∇f/‖∇f‖ for pairwise comparisons (10⁵ draws, 2 %),
invariance to increasing transforms, the closed-form coefficients equal the explicit edge sum of
the comparison graph, and the federated algorithm converging with exact query counts."""
import itertools
import math

import numpy as np
import pytest
import torch

import fedopt
from fedopt.zo.estimators import directions
from fedopt.zo.objectives import (FunctionModel, function_dataset, spd_quadratic,
                                  spd_quadratic_optimum, spd_quadratic_rows, value)
from fedopt.zo.ranking import num_edges, rank_coefficients, ranking


def test_pairwise_mean_is_the_normalised_gradient():
    g = torch.tensor([0.3, -1.2, 0.5], dtype=torch.float64)
    n = 100_000
    xi = torch.from_numpy(directions("gaussian", 4, 0, np.arange(n), 0, 2, 3))
    vals = 1e-6 * xi @ g                                # linear f at x + μξ_j, minus f(x)
    est = torch.einsum("pm,pmd->pd", rank_coefficients(ranking(vals, 1), 2), xi).mean(0)
    want = 2 / math.sqrt(math.pi) * g / g.norm()
    assert (est - want).norm() < 0.02 * want.norm()


def test_invariant_to_increasing_transforms():
    vals = torch.randn(50, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    base = rank_coefficients(ranking(vals, 3), 6)
    for t in (torch.exp(vals), 3 * vals + 7):
        assert torch.equal(rank_coefficients(ranking(t, 3), 6), base)


@pytest.mark.parametrize("m,k", [(2, 1), (5, 2), (6, 6), (7, 3)])
def test_coefficients_equal_the_explicit_edge_sum(m, k):
    vals = torch.randn(4, m, generator=torch.Generator().manual_seed(m * 10 + k),
                       dtype=torch.float64)
    order = ranking(vals, k)
    coef = rank_coefficients(order, m)
    for p in range(4):
        ranked = order[p].tolist()
        edges = list(itertools.combinations(ranked, 2))             # a ranked above b
        edges += [(a, b) for a in ranked for b in range(m) if b not in ranked]
        assert len(edges) == num_edges(m, k)
        want = torch.zeros(m, dtype=torch.float64)
        for a, b in edges:                                          # Σ (ξ_b − ξ_a)
            want[b] += 1
            want[a] -= 1
        assert torch.allclose(coef[p], want / len(edges))


def test_federated_ranksgd_converges_on_shared_objectives_and_counts_queries():
    """Clients sharing one f (rows repeated): averaging normalised-gradient steps then has f's
    minimiser as its fixed point. (With heterogeneous f_i the fixed point is where
    Σ_i ∇f_i/‖∇f_i‖ = 0, not F's minimiser: a rank-only client cannot say how far it is off.)"""
    d, n = 5, 10
    rows = np.repeat(spd_quadratic_rows(1, d, seed=0), n, 0)
    _, f_star = spd_quadratic_optimum(rows, d)
    x0 = torch.zeros(d, dtype=torch.float64)
    cfg = {"data": {"name": "regression", "num_clients": n},
           "algorithm": {"name": "zo_ranksgd", "rounds": 100, "clients_per_round": 5, "m": 5,
                         "k": 2, "mu": 1e-3},
           "client": {"local_steps": 5, "batch_size": 1, "lr_decay": 0.97,
                      "optimizer": {"name": "sgd", "lr": 0.1}},
           "executor": {"dtype": "float64"}, "eval_every": 100, "eval_train": False}
    res = fedopt.run(cfg, dataset=function_dataset(torch.tensor(rows)),
                     model=FunctionModel(spd_quadratic, x0), loss=value, metrics={},
                     progress=False)
    f0 = float(spd_quadratic(x0[None], torch.tensor(rows)[None]).mean())
    assert (res.final("test_loss") - f_star) / (f0 - f_star) < 1e-4
    assert res.final("queries") == 100 * 5 * 5 * 5      # rounds·M·H·m
