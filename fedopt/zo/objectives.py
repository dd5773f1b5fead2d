"""Black-box objectives for zeroth-order clients.

A black box is a function a client can only *evaluate*, batched over query points. Two ways in:

* **Any model + loss** (:class:`ModelBlackBox`): f(θ) = the loss of the model with flat
  parameters θ on fixed data, evaluated under ``torch.no_grad`` for a stack of parameter points
  [P, m, d] -> [P, m]. Inside a run this is what the :class:`~fedopt.zo.estimators.ZerothOrder`
  oracle does through the trainer's ``batched_loss``.
* **A function of x with per-client coefficients** (:class:`FunctionModel`): the "model" is the
  point x ∈ R^d itself, and each client's data row holds the coefficients of its own f_i; the
  per-sample loss :func:`value` returns f_i(x). :func:`function_dataset` builds the federation
  (one train row per client; the test rows are the same rows, so the run's ``test_loss`` is
  F(x) = (1/N) Σ_i f_i(x)). The functions below are such f(x [C, d], rows [C, B, k]) -> [C, B].

Synthetic test functions (``../shared/algorithms/zeroth_order.md`` §2, §3.8; FZooS's
``funcs/``):

* :func:`spd_quadratic`: f_i(x) = ½ (x − c_i)ᵀ A_i (x − c_i), rows [A_i (d·d), c_i (d)];
  F's minimiser is x* = (Σ A_i)⁻¹ Σ A_i c_i (:func:`spd_quadratic_optimum`).
* :func:`fzoos_quadratic`: p(x) = 20·clip(x, 0, 1) − 10,
  f_i(x) = (0.1/d)·(c1_iᵀ p(x)² + c2_iᵀ p(x) + 1), rows [c1_i, c2_i]; per coordinate
  c·_i = 1 + div·(D_i − 1/N), D ~ Dir((1/N)·1_N), so the clients average to exactly 1
  (:func:`fzoos_quadratic_rows`).
* :func:`ackley`, :func:`levy`: the standard Ackley (a = 20, b = 0.2, c = 2π; on
  [−32.768, 32.768]^d) and Levy (on [−10, 10]^d) functions of z = s_i + lb + (ub − lb)·clip(x,0,1)
  shifted per client by s_i (rows [s_i]); global minimum 0 at z = 0.

And one non-differentiable per-sample loss, :func:`zero_one` (misclassification), which only a
zeroth-order oracle can train on.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from fedopt.data import FederatedDataset

#: f(x [C, d], rows [C, B, k]) -> values [C, B]
RowFunction = Callable[[Tensor, Tensor], Tensor]


# --------------------------------------------------------------------------- per-sample losses
def value(outputs: Tensor, targets: Tensor) -> Tensor:
    """The per-sample loss of a :class:`FunctionModel`: its output f_i(x) itself, [N]."""
    return outputs[:, 0]


def zero_one(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample 0-1 loss 1[argmax(outputs) ≠ label] in the outputs' dtype [N]; piecewise
    constant in the parameters (no gradient), so only a zeroth-order oracle can follow it
    (through its smoothed version f_μ)."""
    return (outputs.argmax(dim=-1) != targets).to(outputs.dtype)


# --------------------------------------------------------------------------- black-box adapters
class FunctionModel(nn.Module):
    """The point x ∈ R^d (parameter ``x``, initialised to ``x0``) seen as a model whose output
    on a data row r is [f(x, r)]: forward rows [B, k] -> [B, 1]; ``batched_forward`` for the
    engine's stacked clients: params {"x": [C, d]}, rows [C, B, k] -> [C, B, 1]."""

    def __init__(self, fn: RowFunction, x0: Tensor | np.ndarray):
        super().__init__()
        self.fn = fn
        self.x = nn.Parameter(torch.as_tensor(x0).clone())

    def forward(self, rows: Tensor) -> Tensor:
        return self.fn(self.x.unsqueeze(0), rows.unsqueeze(0))[0].unsqueeze(-1)

    def batched_forward(self, params: dict[str, Tensor], rows: Tensor) -> Tensor:
        return self.fn(params["x"], rows).unsqueeze(-1)


def function_dataset(rows: Tensor | np.ndarray, name: str = "function") -> FederatedDataset:
    """A federation of N clients whose client i holds one row (its f_i's coefficients, [N, k]);
    the test rows are the same rows, one per client, so ``test_loss`` = (1/N) Σ_i f_i(x)."""
    rows = torch.as_tensor(rows)
    n = rows.shape[0]
    zeros = torch.zeros(n, dtype=torch.int64)
    return FederatedDataset(x=rows, y=zeros, offsets=torch.arange(n + 1), x_test=rows.clone(),
                            y_test=zeros.clone(), client_test=torch.arange(n), num_classes=1,
                            name=name)


class ModelBlackBox:
    """f(θ) = Σ_b w_b ℓ(model(θ; x_b), y_b) / Σ_b w_b for flat parameter points θ, evaluated
    under ``torch.no_grad``: ``bb(points [P, m, d]) -> [P, m]`` (``d`` = :attr:`dim`, the
    module's trainable parameters flattened in ``named_parameters`` order). The same data for
    every point (common random numbers); ``queries`` counts evaluated points."""

    def __init__(self, model: nn.Module, loss: Callable[[Tensor, Tensor], Tensor], x: Tensor,
                 y: Tensor, weights: Tensor | None = None):
        from fedopt.engine.local import FunctionalModel, model_params

        self.fmodel = FunctionalModel(model)
        self.like = model_params(model)
        self.dim = sum(v.numel() for v in self.like.values())
        self.loss, self.x, self.y = loss, x, y
        self.w = torch.ones(len(x), dtype=x.dtype) if weights is None else weights
        self.queries = 0

    def flat(self) -> Tensor:
        """The module's current parameters as one flat vector [d]."""
        return torch.cat([v.flatten() for v in self.like.values()])

    def __call__(self, points: Tensor) -> Tensor:
        P, m, d = points.shape
        flat = points.reshape(P * m, d)
        params, lo = {}, 0
        for k, v in self.like.items():
            params[k] = flat[:, lo:lo + v.numel()].reshape((P * m,) + v.shape)
            lo += v.numel()
        with torch.no_grad():
            xb = self.x.unsqueeze(0).expand((P * m,) + self.x.shape)
            out = self.fmodel.batched_forward(params, xb)
            per = self.loss(out.flatten(0, 1), self.y.repeat(P * m)).view(P * m, -1)
            vals = (per * self.w).sum(1) / self.w.sum()
        self.queries += P * m
        return vals.view(P, m)


# --------------------------------------------------------------------------- synthetic functions
def spd_quadratic(x: Tensor, rows: Tensor) -> Tensor:
    """f(x) = ½ (x − c)ᵀ A (x − c) for rows [A (d·d, row-major), c (d)]: x [C, d] -> [C, B]."""
    d = x.shape[-1]
    a = rows[..., :d * d].unflatten(-1, (d, d))
    r = x.unsqueeze(1) - rows[..., d * d:d * d + d]
    return 0.5 * torch.einsum("cbi,cbij,cbj->cb", r, a, r)


def spd_quadratic_rows(num_clients: int, d: int, seed: int = 0, eig: tuple[float, float] = (1, 10)
                       ) -> np.ndarray:
    """Heterogeneous clients (spec T9): A_i = Q_i diag(λ) Q_iᵀ, λ ~ U[eig], Q_i random
    orthogonal; c_i ~ N(0, I). Rows [N, d·d + d] float64."""
    g = np.random.default_rng(seed)
    rows = []
    for _ in range(num_clients):
        q, _ = np.linalg.qr(g.normal(size=(d, d)))
        a = q @ np.diag(g.uniform(*eig, size=d)) @ q.T
        rows.append(np.r_[a.ravel(), g.normal(size=d)])
    return np.asarray(rows)


def spd_quadratic_optimum(rows: np.ndarray, d: int) -> tuple[np.ndarray, float]:
    """(x*, F(x*)) of F = (1/N) Σ_i f_i: x* = (Σ A_i)⁻¹ Σ A_i c_i."""
    a = rows[:, :d * d].reshape(-1, d, d)
    c = rows[:, d * d:]
    x = np.linalg.solve(a.sum(0), np.einsum("nij,nj->i", a, c))
    r = x[None] - c
    return x, float(0.5 * np.einsum("ni,nij,nj->n", r, a, r).mean())


def fzoos_quadratic(x: Tensor, rows: Tensor) -> Tensor:
    """FZooS's ``Quadratic``: rows [c1 (d), c2 (d)]."""
    d = x.shape[-1]
    p = (20 * x.clamp(0, 1) - 10).unsqueeze(1)
    return (0.1 / d) * ((rows[..., :d] * p * p).sum(-1) + (rows[..., d:2 * d] * p).sum(-1) + 1)


def fzoos_quadratic_rows(num_clients: int, d: int, div: float = 0.5, seed: int = 0
                         ) -> np.ndarray:
    """Rows [N, 2d]: c1, c2 = 1 + div·(Dir((1/N)·1_N) − 1/N), one Dirichlet draw per
    coordinate (the clients' coefficients average to exactly 1)."""
    g = np.random.default_rng(seed)
    alpha = np.full(num_clients, 1.0 / num_clients)
    c1 = 1 + div * (g.dirichlet(alpha, size=d) - 1.0 / num_clients)      # [d, N]
    c2 = 1 + div * (g.dirichlet(alpha, size=d) - 1.0 / num_clients)
    return np.concatenate([c1.T, c2.T], axis=1)


def _box(x: Tensor, rows: Tensor, lb: float, ub: float) -> Tensor:
    d = x.shape[-1]
    return rows[..., :d] + lb + (ub - lb) * x.clamp(0, 1).unsqueeze(1)


def ackley(x: Tensor, rows: Tensor, lb: float = -32.768, ub: float = 32.768) -> Tensor:
    """Ackley of z (module docstring): −20 exp(−0.2 √(mean z²)) − exp(mean cos 2πz) + 20 + e."""
    z = _box(x, rows, lb, ub)
    return (-20 * torch.exp(-0.2 * z.pow(2).mean(-1).sqrt())
            - torch.exp(torch.cos(2 * math.pi * z).mean(-1)) + 20 + math.e)


def levy(x: Tensor, rows: Tensor, lb: float = -10.0, ub: float = 10.0) -> Tensor:
    """Levy of z, w = 1 + z/4 (so the minimum is at z = 0): sin²(πw₁)
    + Σ_{k<d} (w_k − 1)²(1 + 10 sin²(πw_k + 1)) + (w_d − 1)²(1 + sin²(2πw_d))."""
    w = 1 + _box(x, rows, lb, ub) / 4
    head = torch.sin(math.pi * w[..., 0]).pow(2)
    mid = ((w[..., :-1] - 1).pow(2) * (1 + 10 * torch.sin(math.pi * w[..., :-1] + 1).pow(2))).sum(-1)
    tail = (w[..., -1] - 1).pow(2) * (1 + torch.sin(2 * math.pi * w[..., -1]).pow(2))
    return head + mid + tail
