"""DADAO: Decoupled Accelerated Decentralized Asynchronous Optimization (Nabli & Oyallon,
ICML 2023, arXiv 2208.00779; reference code AdelNabli/DADAO@eed1ed1; decentralized.md §1).

Node i holds six vectors S_i = [x; x̃; y; ỹ; z; z̃] (float64 ``[n, 6, P]`` here) and the time
t_i of the last event that touched it. With ν = μ/2 and r = √(ν/L), the constants are
η = η̃ = r/8, α = r/4, α̃ = r/8, θ = 1/(2r), γ = 1/(4L), γ̃ = 1/(4√(Lν)), δ = r/4, δ̃ = 1,
β = 1/2, β̃ = 2χ₁(Λ)/r (Λ the rate-weighted Laplacian). Between events S_i follows the linear ODE
dS_i/dt = M S_i,

    ẋ = η(x̃ − x),  x̃' = η(x − x̃),  ẏ = α(ỹ − y),  ỹ' = −θ(νx̃ + y + z),
    ż = α(z̃ − z),  z̃' = α̃(z − z̃),

integrated exactly, S_i(t) = expm(M (t − t_i)) S_i(t_i) (a batch of 6×6 float64 matrix
exponentials, one per touched node). Events on the keyed Poisson stream (gradient clocks of
rate 1 per node, edge clocks of rate λ_ij):

* gradient at node i: propagate; g = ∇f_i(x_i) − ν x_i − ỹ_i; x_i −= γ g, x̃_i −= γ̃ g,
  ỹ_i += (δ + δ̃) g (the reference code's variant, §1.11);
* communication on (i, j): propagate both; m = (y_i + z_i) − (y_j + z_j);
  z_i −= β m, z_j += β m, z̃_i −= β̃ m, z̃_j += β̃ m (Σ z and Σ z̃ are invariant).

Rates: uniform over the edges with total λ_total, by default the theory's
√(2 χ₁(L_u) χ₂(L_u)) (L_u = Lap/|E|), which makes 2 χ₁(Λ) χ₂(Λ) = 1; a total below it breaks
the theorem's condition 2 χ₁(Λ) χ₂(Λ) ≤ 1 and diverges in practice (§1.8), so it is refused
(:class:`~fedopt.schema.ConfigError` naming ``algorithm.comm_rate``). L = max_i L_i and
μ = min_i μ_i come from :meth:`~fedopt.decentralized.objective.NodeObjective.smoothness` unless
``algorithm.L`` / ``algorithm.mu`` are given; μ must be > 0 (``model.l2`` > 0 for
classification).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fedopt.decentralized.engine import (NodeAlgorithm, bind_smoothness, as_index, disjoint_batches,
                                         uniform_edge_rates)
from fedopt.decentralized.events import GRADIENT
from fedopt.decentralized.graphs import Graph, chi1, chi2, dadao_rate, laplacian
from fedopt.schema import ConfigError

X, XT, Y, YT, Z, ZT = range(6)


@dataclass(frozen=True)
class DadaoConstants:
    """The constants of §1.3 from L, μ and χ₁(Λ)."""

    L: float
    mu: float
    chi1: float

    @property
    def nu(self) -> float:
        return self.mu / 2

    @property
    def r(self) -> float:
        return math.sqrt(self.nu / self.L)

    def as_dict(self) -> dict[str, float]:
        r, nu, L = self.r, self.nu, self.L
        return {"eta": r / 8, "alpha": r / 4, "alpha_t": r / 8, "theta": 1 / (2 * r),
                "gamma": 1 / (4 * L), "gamma_t": 1 / (4 * math.sqrt(L * nu)), "delta": r / 4,
                "delta_t": 1.0, "beta": 0.5, "beta_t": 2 * self.chi1 / r, "nu": nu}

    def ode_matrix(self) -> Tensor:
        """M float64 ``[6, 6]`` (rows: d/dt of x, x̃, y, ỹ, z, z̃)."""
        c = self.as_dict()
        m = torch.zeros(6, 6, dtype=torch.float64)
        m[X, X], m[X, XT] = -c["eta"], c["eta"]
        m[XT, X], m[XT, XT] = c["eta"], -c["eta"]
        m[Y, Y], m[Y, YT] = -c["alpha"], c["alpha"]
        m[YT, XT], m[YT, Y], m[YT, Z] = -c["theta"] * c["nu"], -c["theta"], -c["theta"]
        m[Z, Z], m[Z, ZT] = -c["alpha"], c["alpha"]
        m[ZT, Z], m[ZT, ZT] = c["alpha_t"], -c["alpha_t"]
        return m


def propagate(s: Tensor, dt: Tensor, m: Tensor) -> Tensor:
    """expm(M dt_k) S_k for a stack ``s`` ``[k, 6, P]`` and ``dt`` ``[k]`` (float64)."""
    e = torch.linalg.matrix_exp(dt.to(m.dtype)[:, None, None] * m.to(s.device))
    return torch.bmm(e, s)


class Dadao(NodeAlgorithm):
    """DADAO on the virtual clock (module docstring). ``comm_rate``: total edge rate λ_total
    (None: the theory's); ``L``, ``mu``: override the data's constants."""

    def __init__(self, graph: Graph, time_budget: float, *, comm_rate: float | None = None,
                 L: float | None = None, mu: float | None = None, **kw):
        super().__init__(graph, time_budget, **kw)
        need = dadao_rate(graph)
        if comm_rate is not None and comm_rate < need * (1 - 1e-9):
            raise ConfigError(
                f"algorithm.comm_rate: {comm_rate:g} is below the communication rate DADAO's "
                f"theory needs on this {graph.name} graph of {graph.n} nodes, "
                f"√(2 χ₁(L_u) χ₂(L_u)) = {need:.6g} edge activations per time unit (a lower "
                f"rate breaks 2 χ₁(Λ) χ₂(Λ) ≤ 1 and diverges); raise it or leave it null")
        self.comm_rate = need if comm_rate is None else float(comm_rate)
        self.edge_rates = uniform_edge_rates(graph, self.comm_rate)
        lam = laplacian(graph, self.edge_rates)
        self.chi1_lam, self.chi2_lam = chi1(lam), chi2(lam, graph.edges)
        self._L, self._mu = L, mu
        self.consts: DadaoConstants | None = None
        if L is not None and mu is not None:
            self._set_constants(L, mu)

    def _set_constants(self, L: float, mu: float) -> None:
        if not mu > 0:
            raise ConfigError(f"model.l2: DADAO needs a strongly convex problem (μ > 0), got "
                              f"μ = {mu:g}; set model.l2 > 0 (or algorithm.mu)")
        if not L >= mu:
            raise ConfigError(f"algorithm.L: must be ≥ μ = {mu:g}, got {L:g}")
        self.consts = DadaoConstants(float(L), float(mu), self.chi1_lam)
        self.c = self.consts.as_dict()
        self.m = self.consts.ode_matrix()

    def on_bind(self) -> None:
        bind_smoothness(self)

    def event_rates(self) -> tuple[np.ndarray, np.ndarray]:
        return np.ones(self.n), self.edge_rates

    def init_nodes(self, x: Tensor) -> dict[str, Tensor]:
        s = x.new_zeros((x.shape[0], 6, x.shape[1]))
        s[:, X] = x
        s[:, XT] = x
        return {"s": s, "t": x.new_zeros(x.shape[0])}

    def models(self, nodes: dict[str, Tensor]) -> Tensor:
        return nodes["s"][:, X]

    def advance(self, nodes, events, t0: float, t1: float):
        """The base engine's loop with every matrix exponential of the round in one batched
        call: the gaps t − t_i each event sees depend on the event times only, so they are
        known before any state is touched."""
        t_last = nodes["t"].cpu().numpy().copy()
        time, a, b = events.time.tolist(), events.a.tolist(), events.b.tolist()
        gap_a, gap_b = np.zeros(len(time)), np.zeros(len(time))
        for k in range(len(time)):
            gap_a[k], t_last[a[k]] = time[k] - t_last[a[k]], time[k]
            if b[k] >= 0:
                gap_b[k], t_last[b[k]] = time[k] - t_last[b[k]], time[k]
        comm = events.b >= 0
        gaps = np.concatenate([gap_a, gap_b])
        m = self.m.to(nodes["s"].device)
        e = torch.linalg.matrix_exp(
            torch.as_tensor(gaps, dtype=torch.float64, device=m.device)[:, None, None] * m)
        e_a, e_b = e[:len(time)], e[len(time):]
        ranges = (disjoint_batches(events, self.n) if self.batch_events
                  else [(k, k + 1) for k in range(len(time))])
        for lo, hi in ranges:
            sl = slice(lo, hi)
            self.apply(nodes, events.time[sl], events.kind[sl], events.a[sl], events.b[sl],
                       torch.cat([e_a[sl], e_b[sl][torch.as_tensor(comm[sl])]]))
        self.finish(nodes, t1)
        return events.a[events.kind == GRADIENT], int(comm.sum())

    def apply(self, nodes: dict[str, Tensor], time: np.ndarray, kind: np.ndarray,
              a: np.ndarray, b: np.ndarray, expm: Tensor | None = None) -> None:
        """One batch of events on disjoint nodes; ``expm``: the propagators of the touched
        nodes (``a``, then ``b`` of the communications), computed here when None."""
        s, t = nodes["s"], nodes["t"]
        dev = s.device
        g = kind == GRADIENT
        c = self.c
        touched = np.concatenate([a, b[~g]])
        when = torch.as_tensor(np.concatenate([time, time[~g]]), dtype=torch.float64,
                               device=dev)
        idx = as_index(touched, dev)
        if expm is None:
            s[idx] = propagate(s[idx], when - t[idx], self.m)
        else:
            s[idx] = torch.bmm(expm, s[idx])
        t[idx] = when
        if g.any():
            gi = as_index(a[g], dev)
            sg = s[gi]
            r = self.objective.grads(sg[:, X].contiguous(), a[g]) - c["nu"] * sg[:, X] - sg[:, YT]
            sg[:, X] -= c["gamma"] * r
            sg[:, XT] -= c["gamma_t"] * r
            sg[:, YT] += (c["delta"] + c["delta_t"]) * r
            s[gi] = sg
        if (~g).any():
            i, j = as_index(a[~g], dev), as_index(b[~g], dev)
            si, sj = s[i], s[j]
            msg = (si[:, Y] + si[:, Z]) - (sj[:, Y] + sj[:, Z])
            si[:, Z] -= c["beta"] * msg
            sj[:, Z] += c["beta"] * msg
            si[:, ZT] -= c["beta_t"] * msg
            sj[:, ZT] += c["beta_t"] * msg
            s[i] = si
            s[j] = sj

    def finish(self, nodes: dict[str, Tensor], t1: float) -> None:
        s, t = nodes["s"], nodes["t"]
        dt = t1 - t
        nodes["s"] = propagate(s, dt, self.m)
        nodes["t"] = torch.full_like(t, t1)
