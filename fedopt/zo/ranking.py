"""ZO-RankSGD's estimator (Tang, Rybin & Chang, "Zeroth-Order Optimization Meets Human Feedback:
Provable Learning via Ranking Oracles", ICLR 2024, arXiv 2303.03751;
``../shared/algorithms/zeroth_order.md`` §4): gradient directions from a ranking oracle.

An (m, k)-ranking oracle receives m points and returns the indices of its k best (smallest f),
in order; no value leaves it (a human rater, or any strictly increasing transform of f, gives
the same answer). With ξ_1..ξ_m ~ N(0, I_d) and the ranking π of x + μξ_1..x + μξ_m, the implied
comparison graph has an edge a ≻ b when a is ranked above b, or a is ranked and b is not:
|E| = k(k−1)/2 + k(m−k) edges, and

    ĝ = (1/|E|) Σ_{(a,b)∈E} (ξ_b − ξ_a)            (points from better toward worse: ascent)

In closed form: the item ranked r (0-based, r < k) gets coefficient −(m−1−2r), each unranked
item +k, all divided by |E| (:func:`rank_coefficients`). For pairwise comparisons (m = 2,
k = 1) and μ → 0, E ĝ = (2/√π)·∇f/‖∇f‖: a multiple of the *normalised* gradient, so
x ← x − η ĝ behaves like normalised SGD.

Shapes: values [P, m] -> coefficients [P, m]; directions ξ [P, m, d] keyed like the estimators'
(:func:`fedopt.zo.estimators.directions`, ``gaussian``), so a client may send the k indices
of its ranking and the server regenerates ξ and ĝ.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fedopt.engine.program import Batch, OracleContext, Params
from fedopt.zo.estimators import _flatten, _unflatten, directions


def num_edges(m: int, k: int) -> int:
    """|E| = k(k−1)/2 + k(m−k)."""
    return k * (k - 1) // 2 + k * (m - k)


def ranking(values: Tensor, k: int) -> Tensor:
    """The (m, k)-ranking oracle: indices [P, k] of the k smallest values, best first."""
    return torch.argsort(values, dim=-1, stable=True)[..., :k]


def rank_coefficients(order: Tensor, m: int) -> Tensor:
    """c [P, m] with ĝ = Σ_j c_j ξ_j from a ranking ``order`` [P, k] (module docstring)."""
    p, k = order.shape
    coef = torch.full((p, m), float(k), dtype=torch.float64)
    r = torch.arange(k, dtype=torch.float64)
    coef.scatter_(1, order, (-(m - 1 - 2 * r)).expand(p, k).contiguous())
    return coef / num_edges(m, k)


@dataclass(frozen=True)
class Ranking:
    """The local program's ranking oracle: each local step asks the client's (m, k)-ranking
    oracle about y + μξ_1..y + μξ_m (its minibatch loss under ``torch.no_grad``, of which only
    the order is used) and returns ĝ; m queries per step. ``ξ`` keyed by (seed, key, client,
    step, j) like :class:`~fedopt.zo.estimators.ZerothOrder`'s gaussian directions."""

    m: int = 5
    k: int = 2
    mu: float = 1e-2

    def __post_init__(self) -> None:
        if not (isinstance(self.m, int) and self.m >= 2):
            raise ValueError(f"m: must be an integer >= 2, got {self.m!r}")
        if not (isinstance(self.k, int) and 1 <= self.k <= self.m):
            raise ValueError(f"k: must be an integer in [1, m = {self.m}], got {self.k!r}")
        if not self.mu > 0:
            raise ValueError(f"mu: must be > 0, got {self.mu!r}")

    def queries_per_step(self, d: int) -> int:
        return self.m

    def gradient(self, ctx: OracleContext, y: Params, batch: Batch) -> tuple[Params, Tensor]:
        info = ctx.step_keys
        flat = _flatten(y)
        C, d = flat.shape
        xi = torch.from_numpy(directions("gaussian", ctx.seed, info.keys, info.client_ids,
                                         info.step, self.m, d)).to(flat)
        pts = (flat[:, None] + self.mu * xi).reshape(C * self.m, d)
        rep = Batch(*(t.unsqueeze(1).expand((C, self.m) + t.shape[1:]).reshape(
            (C * self.m,) + t.shape[1:]) for t in batch))
        with torch.no_grad():
            vals = ctx.batched_loss(_unflatten(pts, y), rep).view(C, self.m)
            coef = rank_coefficients(ranking(vals, self.k), self.m).to(flat)
            g = torch.einsum("cm,cmd->cd", coef, xi)
        return _unflatten(g, y), vals.mean(1)
