"""The non-accelerated baselines (decentralized.md §2.1, §2.2).

**Randomized gossip** (Boyd, Ghosh, Prabhakar & Shah 2006), with a gradient clock (asynchronous
gossip SGD, "DADAO without momentum or duals"): on the keyed Poisson stream,

* a gradient event of node i: ``x_i ← x_i − η ∇f_i(x_i)`` (rate ``grad_rate`` per node; 0 gives
  pure averaging, whose exact limit is the average of the starts);
* a communication on edge (i, j): ``x_i, x_j ← (x_i + x_j)/2`` (``X ← W_k X`` with
  ``W_k = I − (e_i − e_j)(e_i − e_j)ᵀ/2``: the average Σ_i x_i is invariant).

Edge rates: Boyd's (every node ticks at rate 1 and picks a uniform neighbour: λ_ij = 1/d_i +
1/d_j, total n) or ``comm_rate`` spread uniformly over the edges. The ε-averaging time is
Θ(log(1/ε)/(1 − λ₂(E[W]))) ticks; with a constant η the iterates converge only to a
neighbourhood of x*.

**D-SGD** (synchronous decentralized gradient descent / gossip averaging): one round per time
unit (each node one full local gradient, each edge one exchange: |E| communications) with a
symmetric doubly stochastic ``W`` (Metropolis–Hastings by default; ``laplacian``:
W = I − Lap/λ_max(Lap)), ``mixing_steps`` q applications of W per round:

* ``combine_then_adapt``: ``X ← W^q X − η ∇F(X)`` (gradients at the old local iterates);
* ``adapt_then_combine``: ``X ← W^q (X − η ∇F(X))``.

With W = 11ᵀ/n (complete graph, Metropolis weights) adapt-then-combine is centralized gradient
descent on f = (1/n) Σ_i f_i from the average, exactly. Pure mixing (η = 0) keeps the average and
contracts the consensus error by max(|λ₂(W)|, |λ_n(W)|)^q per round.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from fedopt.decentralized.engine import (NodeAlgorithm, as_index, boyd_edge_rates,
                                         uniform_edge_rates)
from fedopt.decentralized.events import GRADIENT
from fedopt.decentralized.graphs import Graph, laplacian, metropolis_weights


class Gossip(NodeAlgorithm):
    """Randomized pairwise gossip with a gradient clock (module docstring). ``lr`` η ≥ 0;
    ``grad_rate`` ≥ 0 per node; ``comm_rate``: None (Boyd's) or the total edge rate."""

    def __init__(self, graph: Graph, time_budget: float, *, lr: float = 0.1,
                 grad_rate: float = 1.0, comm_rate: float | None = None, **kw):
        super().__init__(graph, time_budget, **kw)
        self.lr, self.grad_rate, self.comm_rate = float(lr), float(grad_rate), comm_rate

    def event_rates(self) -> tuple[np.ndarray, np.ndarray]:
        edges = (boyd_edge_rates(self.graph) if self.comm_rate is None
                 else uniform_edge_rates(self.graph, self.comm_rate))
        return np.full(self.n, self.grad_rate), edges

    def apply(self, nodes: dict[str, Tensor], time: np.ndarray, kind: np.ndarray,
              a: np.ndarray, b: np.ndarray) -> None:
        x = nodes["x"]
        g = kind == GRADIENT
        if g.any():
            idx = as_index(a[g], x.device)
            x[idx] -= self.lr * self.objective.grads(x[idx], a[g])
        if (~g).any():
            i, j = as_index(a[~g], x.device), as_index(b[~g], x.device)
            avg = 0.5 * (x[i] + x[j])
            x[i] = avg
            x[j] = avg


class DSGD(NodeAlgorithm):
    """Synchronous decentralized gradient descent (module docstring): a round at every whole
    time unit ≤ T. ``mixing``: ``metropolis`` | ``laplacian``; ``form``:
    ``combine_then_adapt`` | ``adapt_then_combine``."""

    uses_stream = False

    def __init__(self, graph: Graph, time_budget: float, *, lr: float = 0.1,
                 mixing: str = "metropolis", mixing_steps: int = 1,
                 form: str = "combine_then_adapt", **kw):
        super().__init__(graph, time_budget, **kw)
        self.lr, self.form, self.q = float(lr), form, int(mixing_steps)
        if mixing == "metropolis":
            w = metropolis_weights(graph)
        else:
            lap = laplacian(graph)
            w = np.eye(graph.n) - lap / np.linalg.eigvalsh(lap)[-1]
        self.w_np = w
        self._w: Tensor | None = None

    def mix(self, x: Tensor) -> Tensor:
        if self._w is None or self._w.device != x.device:
            self._w = torch.as_tensor(self.w_np, dtype=torch.float64, device=x.device)
        for _ in range(self.q):
            x = self._w @ x
        return x

    def advance(self, nodes, events, t0: float, t1: float):
        rounds = int(math.floor(t1 + 1e-9)) - int(math.floor(t0 + 1e-9))
        x = nodes["x"]
        all_nodes = np.arange(self.n)
        for _ in range(rounds):
            if self.lr == 0:
                x = self.mix(x)
            elif self.form == "adapt_then_combine":
                x = self.mix(x - self.lr * self.objective.grads(x, all_nodes))
            else:
                x = self.mix(x) - self.lr * self.objective.grads(x, all_nodes)
        nodes["x"] = x
        return np.tile(all_nodes, rounds), rounds * self.graph.num_edges * self.q
