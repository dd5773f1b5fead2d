"""SA-SRRW: a token walking the graph with a self-repellent random walk, SGD at each visited node
(Hu, Doshi & Eun, ICLR 2024, arXiv 2401.09665; kernel of Doshi, Hu & Eun, ICML 2023;
zeroth_order.md §6, seed_extras.md §7).

Base chain P reversible w.r.t. μ: ``mhrw`` (Metropolis–Hastings to uniform, P_ij = min(1/d_i,
1/d_j) on edges, P_ii = 1 − Σ_j P_ij, μ = 1/N) or ``srw`` (simple random walk, P_ij = 1/d_i,
μ_i = d_i/2|E|; gradients reweighted by 1/(N μ_i) so the walk minimizes the uniform mean
f = (1/N) Σ_i f_i). With s_j(x) = (x_j/μ_j)^(−α) the self-repellent kernel is

    K_ij[x] = P_ij s_j(x) / Σ_k P_ik s_k(x)     (computed in log space: log P_ik − α log(x_k/μ_k),
                                                 then a softmax over k; self-loops included)

and one step n → n+1 (token at X_n, visit measure x_n in the simplex's interior, model θ_n):

    X_{n+1} ~ K_{X_n,·}[x_n];  x_{n+1} = x_n + γ_{n+1}(e_{X_{n+1}} − x_n);
    θ_{n+1} = θ_n − β_{n+1} w_{X_{n+1}} ∇f_{X_{n+1}}(θ_n),

γ_n = (n+1)^(−a), β_n = c_β (n+1)^(−b) (regime b > a gives the O(1/α²) covariance decrease),
w_i = 1/(N μ_i). α = 0 is the base Markov chain. ``radius``: optional projection of θ onto the
ball ‖θ‖ ≤ radius. The draw of step n is :func:`fedopt.rng.keyed_uniform` (seed, stream, run, n).

On the engine: ``steps_per_unit`` hops per virtual time unit (default N, so a time unit costs N
gradients as for the other algorithms); each hop is one communication (θ and x travel with the
token) and one gradient. Every node's "model" is the token's θ (consensus_error 0).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fedopt.decentralized.engine import NodeAlgorithm
from fedopt.decentralized.graphs import Graph
from fedopt.rng import STREAM_WALK, keyed_uniform


def base_chain(graph: Graph, chain: str = "mhrw") -> tuple[np.ndarray, np.ndarray]:
    """(P float64 [N, N], μ float64 [N]) of the base chain (module docstring)."""
    n, d = graph.n, graph.degrees().astype(np.float64)
    p = np.zeros((n, n))
    i, j = graph.edges[:, 0], graph.edges[:, 1]
    if chain == "mhrw":
        v = np.minimum(1 / d[i], 1 / d[j])
        p[i, j], p[j, i] = v, v
        p[np.arange(n), np.arange(n)] = 1 - p.sum(1)
        return p, np.full(n, 1.0 / n)
    if chain == "srw":
        p[i, j], p[j, i] = 1 / d[i], 1 / d[j]
        return p, d / d.sum()
    raise ValueError(f"chain: 'mhrw' or 'srw', got {chain!r}")


def kernel(p: np.ndarray, mu: np.ndarray, x: np.ndarray, alpha: float) -> np.ndarray:
    """K[x] float64 [N, N] (rows: from; log-space softmax, exact rows summing to 1)."""
    with np.errstate(divide="ignore"):
        logits = np.log(p) - alpha * (np.log(x) - np.log(mu))[None, :]
    logits -= logits.max(1, keepdims=True)
    k = np.exp(logits)
    return k / k.sum(1, keepdims=True)


def stationary(p: np.ndarray, mu: np.ndarray, x: np.ndarray, alpha: float) -> np.ndarray:
    """π[x]_i ∝ μ_i s_i(x) Σ_k P_ik s_k(x), the law K[x] is reversible for (log space)."""
    ls = -alpha * (np.log(x) - np.log(mu))
    with np.errstate(divide="ignore"):
        inner = np.log(p) + ls[None, :]
    m = inner.max(1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(inner - m).sum(1))
    lp = np.log(mu) + ls + lse
    w = np.exp(lp - lp.max())
    return w / w.sum()


def walk_step(p: np.ndarray, mu: np.ndarray, pos: np.ndarray, x: np.ndarray, alpha: float,
              gamma: float, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One SRRW step of R independent walks: ``pos`` int64 [R], ``x`` float64 [R, N], ``u``
    uniforms [R] -> (next positions, next measures)."""
    with np.errstate(divide="ignore"):
        logits = np.log(p[pos]) - alpha * (np.log(x) - np.log(mu)[None, :])
    logits -= logits.max(1, keepdims=True)
    k = np.exp(logits)
    cdf = np.cumsum(k, 1)
    nxt = (cdf < (u * cdf[:, -1])[:, None]).sum(1)
    nxt = np.minimum(nxt, p.shape[0] - 1)
    onehot = np.zeros_like(x)
    onehot[np.arange(len(pos)), nxt] = 1.0
    return nxt, x + gamma * (onehot - x)


class SRRW(NodeAlgorithm):
    """SA-SRRW token SGD on the engine (module docstring)."""

    uses_stream = False

    def __init__(self, graph: Graph, time_budget: float, *, alpha: float = 1.0,
                 lr: float = 0.5, a: float = 0.6, b: float = 0.9, chain: str = "mhrw",
                 steps_per_unit: int | None = None, radius: float | None = None, **kw):
        super().__init__(graph, time_budget, **kw)
        self.p, self.mu = base_chain(graph, chain)
        self.alpha, self.lr, self.a, self.b = float(alpha), float(lr), float(a), float(b)
        self.steps = int(steps_per_unit or graph.n)
        self.radius = radius
        self.weights = 1.0 / (graph.n * self.mu)

    def init_nodes(self, x: Tensor) -> dict[str, Tensor]:
        return {"theta": x[0].clone(), "pos": torch.zeros((), dtype=torch.int64),
                "measure": torch.full((self.n,), 1.0 / self.n, dtype=torch.float64),
                "step": torch.zeros((), dtype=torch.int64)}

    def models(self, nodes: dict[str, Tensor]) -> Tensor:
        return nodes["theta"].unsqueeze(0).expand(self.n, -1)

    def advance(self, nodes, events, t0: float, t1: float):
        hops = int(round(t1 * self.steps)) - int(round(t0 * self.steps))
        theta = nodes["theta"]
        pos = np.array([int(nodes["pos"])])
        x = nodes["measure"].cpu().numpy()[None, :]
        step = int(nodes["step"])
        visited = np.empty(hops, dtype=np.int64)
        for h in range(hops):
            n1 = step + 1
            u = keyed_uniform(self.seed, STREAM_WALK, 0, step)
            pos, x = walk_step(self.p, self.mu, pos, x, self.alpha, (n1 + 1.0) ** -self.a,
                               np.atleast_1d(u))
            node = int(pos[0])
            beta = self.lr * (n1 + 1.0) ** -self.b
            g = self.objective.grads(theta.unsqueeze(0), np.array([node]))[0]
            theta = theta - beta * self.weights[node] * g
            if self.radius is not None:
                norm = float(theta.norm())
                if norm > self.radius:
                    theta = theta * (self.radius / norm)
            visited[h] = node
            step = n1
        nodes["theta"] = theta
        nodes["pos"] = torch.tensor(int(pos[0]))
        nodes["measure"] = torch.as_tensor(x[0])
        nodes["step"] = torch.tensor(step)
        return visited, hops
