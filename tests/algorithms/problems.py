"""Shared test problems of the drift-correcting family's tests.

Federated least squares with heterogeneous client Hessians — F_i(w) = ‖A_i w − t_i‖² / (2 n_i)
with per-client feature scales, a trainer with the closed-form gradient, and the exact minimiser
of Σ_i p_i F_i (the normal equations) as the oracle — and a small cross-entropy problem.
"""
import numpy as np
import torch
from torch import nn

from fedopt.data import FederatedDataset
from fedopt.engine.contract import SharedStart
from fedopt.engine.executor import VectorizedExecutor
from fedopt.engine.local import FunctionalModel, LocalTrainer
from fedopt.engine.program import LocalProgram
from fedopt.optim import make

D = 4


class LeastSquaresTrainer(LocalTrainer):
    """ℓ(w; ξ) = mean_b ½ (a_b·w − t_b)², rows x_b = [a_b, t_b]; the closed-form gradient."""

    def _batched_grad(self, y, xb, yb, wn):
        a, t = xb[..., :-1], xb[..., -1]
        r = torch.einsum("cbd,cd->cb", a, y["w"]) - t
        return {"w": torch.einsum("cb,cbd->cd", wn * r, a)}, (wn * 0.5 * r * r).sum(1)


class _Vector(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(D, dtype=torch.float64))


def least_squares_data(sizes, seed=0):
    """Clients with different Hessians A_iᵀA_i/n_i (per-client feature scales) and targets."""
    g = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        a = g.normal(size=(n, D)) * np.exp(g.normal(0, 0.7, D))
        t = a @ g.normal(size=D) + g.normal(size=n) + 2 * g.normal()
        rows.append(np.c_[a, t])
    x = torch.tensor(np.concatenate(rows))
    z = torch.zeros(2, dtype=torch.int64)
    return FederatedDataset(x=x, y=torch.zeros(len(x), dtype=torch.int64),
                            offsets=torch.tensor(np.r_[0, np.cumsum(sizes)]), x_test=x[:2],
                            y_test=z, client_test=z, num_classes=1, name="least-squares")


def global_optimum(data, p):
    """argmin_w Σ_i p_i F_i(w), F_i(w) = ‖A_i w − t_i‖²/(2 n_i): the normal equations."""
    off = data.offsets.numpy()
    h, b = np.zeros((D, D)), np.zeros(D)
    for i in range(len(off) - 1):
        a, t = data.x[off[i]:off[i + 1], :-1].numpy(), data.x[off[i]:off[i + 1], -1].numpy()
        h += p[i] * a.T @ a / len(t)
        b += p[i] * a.T @ t / len(t)
    return np.linalg.solve(h, b)


def ls_executor(data, lr, steps=None, epochs=None, batch=32, mu=0.0):
    trainer = LeastSquaresTrainer(FunctionalModel(_Vector()), make("sgd", lr=lr),
                                  LocalProgram(prox_mu=mu))
    return VectorizedExecutor(data, trainer, batch_size=batch, local_steps=steps,
                              local_epochs=epochs, seed=0)


C = 3   # classes of the cross-entropy problem


def ce_data(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (n,), generator=g)
    return FederatedDataset(x=x, y=y, offsets=torch.tensor(np.r_[0, np.cumsum(sizes)]),
                            x_test=x[:4], y_test=y[:4], client_test=torch.zeros(4, dtype=torch.int64),
                            num_classes=C, name="tiny")


def ce_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, C)).double()


class Recording:
    """Forwards to an executor and keeps every synchronous round's (params, ids, weights,
    output): the ``run_jobs`` calls from a shared start."""

    def __init__(self, executor):
        self.executor = executor
        self.calls = []

    def __getattr__(self, name):
        return getattr(self.executor, name)

    def run_jobs(self, starts, ids, keys, weights, **kw):
        out = self.executor.run_jobs(starts, ids, keys, weights, **kw)
        assert isinstance(starts, SharedStart)
        self.calls.append(({k: v.clone() for k, v in starts.params.items()}, ids, weights, out))
        return out
