"""An independent least-squares node objective for the engine's oracle tests:

    f_i(x) = (1/(2m)) ‖A_i x − b_i‖² + (λ/2)‖x‖²,   f = (1/n) Σ_i f_i,

with its gradients, exact minimizer (normal equations) and L_i, μ_i (extreme eigenvalues of
A_iᵀA_i/m, plus λ) in closed form — written here, not taken from fedopt.decentralized."""
import numpy as np
import torch


class Quadratic:
    def __init__(self, n=8, d=5, m=20, l2=0.0, spread=1.0, seed=0):
        rng = np.random.default_rng(seed)
        scales = np.exp(np.linspace(0, np.log(spread), d)) if spread != 1.0 else np.ones(d)
        self.A = torch.as_tensor(rng.standard_normal((n, m, d)) * scales, dtype=torch.float64)
        self.b = torch.as_tensor(rng.standard_normal((n, m)) + 3 * rng.standard_normal((n, 1)),
                                 dtype=torch.float64)
        self.n, self.d, self.m, self.l2 = n, d, m, l2
        self.counts = np.full(n, m)
        self.dim = d
        self.device = torch.device("cpu")
        hess = torch.einsum("imd,ime->ide", self.A, self.A) / m
        self.hess = hess + l2 * torch.eye(d, dtype=torch.float64)
        ev = torch.linalg.eigvalsh(self.hess)
        self.L, self.mu = float(ev[:, -1].max()), float(ev[:, 0].min())

    def grads(self, x, nodes):
        nodes = torch.as_tensor(np.asarray(nodes))
        a, b = self.A[nodes], self.b[nodes]
        r = torch.einsum("kmd,kd->km", a, x) - b
        return torch.einsum("kmd,km->kd", a, r) / self.m + self.l2 * x

    def value(self, x):
        r = torch.einsum("imd,d->im", self.A, x) - self.b
        return float((0.5 * r.pow(2).sum(1) / self.m).mean() + 0.5 * self.l2 * x.pow(2).sum())

    def optimum(self):
        h = self.hess.mean(0)
        rhs = (torch.einsum("imd,im->id", self.A, self.b) / self.m).mean(0)
        x = torch.linalg.solve(h, rhs)
        return x, self.value(x)

    # what the engine's init/run_round use
    def flatten(self, params):
        return params["w"].reshape(-1).to(torch.float64)

    def unflatten(self, flat):
        return {"w": flat}

    def smoothness(self):
        ev = torch.linalg.eigvalsh(self.hess)
        return ev[:, -1].numpy(), ev[:, 0].numpy()

    def solve(self, x0):
        return self.optimum()


def bind(alg, quad):
    alg.objective = quad
    alg.on_bind()
    return alg
