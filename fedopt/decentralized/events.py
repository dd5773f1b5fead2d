"""The Poisson event stream of a decentralized run on the virtual clock.

Every node ``i`` has a gradient clock, a Poisson process of rate ``g_i`` (1 by default: one
time unit = one expected gradient per node), and every edge ``(i, j)`` a communication clock of
rate ``λ_ij``. The superposition of these independent processes is one Poisson process of rate
``R = Σ_i g_i + Σ_ij λ_ij`` whose every event is, independently, the gradient of node ``i`` with
probability ``g_i/R`` or the communication on edge ``(i, j)`` with probability ``λ_ij/R``
(decentralized.md §1.7); that is how the stream is drawn.

Event ``k`` (k = 0, 1, ...) is a pure function of ``(seed, k)``: its exponential gap
``−log(1 − u_k0)/R`` and its owner (``u_k1`` looked up in the cumulative rates) come from
:func:`fedopt.rng.keyed_uniform` on stream :data:`STREAM_EVENTS`, and its time is the running
sum ``t_k = t_{k−1} + gap_k`` accumulated left to right (``np.cumsum`` continues from the last
time), so any split of the stream into pieces — evaluation intervals, a resumed run — gives the
same times bit for bit, on every executor.

An event is ``(time, kind, a, b)`` with ``kind`` :data:`GRADIENT` (node ``a``, ``b = −1``) or
:data:`COMMUNICATION` (edge ``(a, b)``, ``a < b``, edge index ``e``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedopt.rng import STREAM_EVENTS, keyed_uniform

GRADIENT = 0
COMMUNICATION = 1


@dataclass
class Events:
    """A batch of consecutive events, float64/int64 arrays of one length: ``time``, ``kind``,
    ``a``, ``b`` (−1 for a gradient) and ``edge`` (edge index, −1 for a gradient)."""

    time: np.ndarray
    kind: np.ndarray
    a: np.ndarray
    b: np.ndarray
    edge: np.ndarray

    def __len__(self) -> int:
        return len(self.time)


class EventStream:
    """The keyed superposed stream; ``position`` ``(k, t)`` = next event index and the time of
    the last drawn event (``(0, 0.0)`` at the start) is all its state (checkpointed by the
    algorithms that use it).

    ``grad_rates`` float64 ``[n]`` (> 0 or 0 for a node that never computes), ``edges`` int64
    ``[E, 2]`` and ``edge_rates`` float64 ``[E]`` (≥ 0); ValueError when every rate is 0."""

    def __init__(self, grad_rates: np.ndarray, edges: np.ndarray, edge_rates: np.ndarray,
                 seed: int, block: int = 1 << 20):
        self.grad_rates = np.asarray(grad_rates, dtype=np.float64)
        self.edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
        self.edge_rates = np.asarray(edge_rates, dtype=np.float64)
        if self.edge_rates.shape != (len(self.edges),):
            raise ValueError(f"edge_rates: one per edge expected, got {self.edge_rates.shape}")
        if (self.grad_rates < 0).any() or (self.edge_rates < 0).any():
            raise ValueError("rates must be >= 0")
        rates = np.concatenate([self.grad_rates, self.edge_rates])
        self.total = float(rates.sum())
        if not self.total > 0:
            raise ValueError("every event rate is 0: nothing would ever happen")
        self.n = len(self.grad_rates)
        self.cum = np.cumsum(rates) / self.total
        self.cum[-1] = 1.0
        self.seed = int(seed)
        self.block = int(block)
        self.k = 0
        self.t = 0.0

    @property
    def position(self) -> tuple[int, float]:
        return self.k, self.t

    def seek(self, k: int, t: float) -> None:
        """Continue after event ``k − 1``, which happened at time ``t`` (from :attr:`position`)."""
        self.k, self.t = int(k), float(t)

    def draw(self, k0: int, count: int, t_prev: float) -> Events:
        """Events ``k0 .. k0 + count − 1``, the one before ``k0`` at ``t_prev`` (pure)."""
        k = np.arange(k0, k0 + count, dtype=np.int64)
        gaps = -np.log1p(-keyed_uniform(self.seed, STREAM_EVENTS, k, 0)) / self.total
        time = np.cumsum(np.concatenate([[t_prev], gaps]))[1:]
        owner = np.searchsorted(self.cum, keyed_uniform(self.seed, STREAM_EVENTS, k, 1),
                                side="right")
        owner = np.minimum(owner, len(self.cum) - 1)
        grad = owner < self.n
        edge = np.where(grad, -1, owner - self.n)
        a = np.where(grad, owner, self.edges[np.maximum(edge, 0), 0] if len(self.edges) else -1)
        b = np.where(grad, -1, self.edges[np.maximum(edge, 0), 1] if len(self.edges) else -1)
        return Events(time, np.where(grad, GRADIENT, COMMUNICATION).astype(np.int64),
                      a.astype(np.int64), b.astype(np.int64), edge.astype(np.int64))

    def until(self, t_end: float) -> Events:
        """Every event after the current position with time ≤ ``t_end``, in order; advances
        the position past them."""
        parts: list[Events] = []
        while True:
            expected = self.total * max(t_end - self.t, 0.0)
            ev = self.draw(self.k, int(min(self.block, 1.2 * expected + 64)), self.t)
            m = int(np.searchsorted(ev.time, t_end, side="right"))
            if m:
                parts.append(Events(ev.time[:m], ev.kind[:m], ev.a[:m], ev.b[:m], ev.edge[:m]))
                self.k += m
                self.t = float(ev.time[m - 1])
            if m < len(ev):
                break
        if not parts:
            e = np.zeros(0, dtype=np.int64)
            return Events(np.zeros(0), e, e, e, e)
        return Events(*(np.concatenate([getattr(p, f) for p in parts])
                        for f in ("time", "kind", "a", "b", "edge")))
