"""Communication graphs of the decentralized family and the spectral constants DADAO needs.

A :class:`Graph` is ``n`` nodes and an int64 edge list ``edges [E, 2]`` (each undirected edge
once, ``i < j``, sorted, no self-loops). Builders: :func:`complete`, :func:`ring`,
:func:`star` (node 0 is the centre), :func:`grid` and :func:`torus` (``rows × cols``, node
``r·cols + c``), :func:`erdos_renyi` (each pair independently with probability ``p``),
:func:`geometric` (``n`` points uniform in ``[0, 1]²``, an edge when their distance is at
most ``radius``) and :func:`from_edges` (a user's list). The random ones are keyed by the seed
(:func:`fedopt.rng.round_generator`), so a config gives the same graph on every host.

Matrices (float64 ``[n, n]``):

* :func:`laplacian`: ``Λ = Σ_{(i,j)∈E} λ_ij (e_i − e_j)(e_i − e_j)ᵀ`` (``λ_ij = 1``: the
  combinatorial Laplacian ``D − A``);
* χ₁(Q) = 1/λ₂(Q), the inverse of the smallest positive eigenvalue (:func:`chi1`);
* χ₂(Q) = ½ · max_{(i,j)∈E} (e_i − e_j)ᵀ Q⁺ (e_i − e_j), half the largest effective resistance
  over the edges (:func:`chi2`; the factor ½ as in Nabli & Oyallon's reference code,
  ``compute_graph_resistance``).

DADAO's uniform communication rate (Nabli & Oyallon, ICML 2023; decentralized.md §1.8): with
``L_u = Lap/|E|``, ``λ_total = √(2 χ₁(L_u) χ₂(L_u))`` and ``λ_ij = λ_total/|E|``, so that the
rate-weighted Laplacian ``Λ = λ_total · L_u`` meets the theorem's condition
``2 χ₁(Λ) χ₂(Λ) ≤ 1`` with equality (:func:`dadao_rate`).

A disconnected graph is refused by :func:`check_connected` with a :class:`ConfigError` naming
``topology`` (the config section that built it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fedopt.rng import STREAM_GRAPH, round_generator
from fedopt.schema import ConfigError


@dataclass(frozen=True)
class Graph:
    """An undirected simple graph: ``n`` nodes, ``edges`` int64 ``[E, 2]`` with ``i < j``."""

    n: int
    edges: np.ndarray
    name: str = "graph"

    @property
    def num_edges(self) -> int:
        return int(self.edges.shape[0])

    def degrees(self) -> np.ndarray:
        """int64 ``[n]``: the number of neighbours of each node."""
        return np.bincount(self.edges.ravel(), minlength=self.n).astype(np.int64)

    def neighbours(self) -> list[np.ndarray]:
        """For each node, its neighbours' ids (sorted int64 arrays)."""
        out: list[list[int]] = [[] for _ in range(self.n)]
        for i, j in self.edges.tolist():
            out[i].append(j)
            out[j].append(i)
        return [np.asarray(sorted(v), dtype=np.int64) for v in out]


def _canonical(n: int, pairs: np.ndarray, name: str, field: str = "topology") -> Graph:
    """Edges as ``i < j``, de-duplicated and sorted; ConfigError naming ``field`` for a node id
    outside ``[0, n)`` or a self-loop."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if pairs.size and (pairs.min() < 0 or pairs.max() >= n):
        raise ConfigError(f"{field}: edge endpoint outside the nodes 0..{n - 1}")
    if pairs.size and bool((pairs[:, 0] == pairs[:, 1]).any()):
        i = int(pairs[pairs[:, 0] == pairs[:, 1]][0, 0])
        raise ConfigError(f"{field}: self-loop ({i}, {i}) is not an edge")
    pairs = np.sort(pairs, axis=1)
    pairs = np.unique(pairs, axis=0) if pairs.size else pairs.reshape(0, 2)
    return Graph(int(n), pairs, name)


def _need(n: int, least: int, name: str) -> None:
    if n < least:
        raise ConfigError(f"topology.name: a {name} needs at least {least} nodes "
                          f"(data.num_clients), got {n}")


def complete(n: int) -> Graph:
    """``K_n``: every pair of nodes."""
    _need(n, 2, "complete graph")
    i, j = np.triu_indices(n, 1)
    return _canonical(n, np.stack([i, j], 1), "complete")


def ring(n: int) -> Graph:
    """The cycle ``C_n``: ``(i, i+1 mod n)`` (n = 2 is one edge)."""
    _need(n, 2, "ring")
    i = np.arange(n)
    return _canonical(n, np.stack([i, (i + 1) % n], 1), "ring")


def star(n: int) -> Graph:
    """Node 0 joined to every other node."""
    _need(n, 2, "star")
    leaves = np.arange(1, n)
    return _canonical(n, np.stack([np.zeros_like(leaves), leaves], 1), "star")


def _lattice(rows: int, cols: int, wrap: bool) -> np.ndarray:
    idx = np.arange(rows * cols).reshape(rows, cols)
    pairs = []
    if wrap:
        pairs += [np.stack([idx.ravel(), np.roll(idx, -1, 1).ravel()], 1),
                  np.stack([idx.ravel(), np.roll(idx, -1, 0).ravel()], 1)]
    else:
        pairs += [np.stack([idx[:, :-1].ravel(), idx[:, 1:].ravel()], 1),
                  np.stack([idx[:-1, :].ravel(), idx[1:, :].ravel()], 1)]
    pairs = np.concatenate(pairs)
    return pairs[pairs[:, 0] != pairs[:, 1]]


def grid(rows: int, cols: int) -> Graph:
    """The ``rows × cols`` 2-D grid (4-neighbourhood, no wrap-around)."""
    _need(rows * cols, 2, "grid")
    return _canonical(rows * cols, _lattice(rows, cols, False), "grid")


def torus(rows: int, cols: int) -> Graph:
    """The ``rows × cols`` grid with wrap-around in both directions."""
    _need(rows * cols, 2, "torus")
    return _canonical(rows * cols, _lattice(rows, cols, True), "torus")


def erdos_renyi(n: int, p: float, seed: int) -> Graph:
    """G(n, p): each of the n(n−1)/2 pairs is an edge independently with probability ``p``
    (uniforms keyed by ``seed``)."""
    _need(n, 2, "Erdős–Rényi graph")
    i, j = np.triu_indices(n, 1)
    u = round_generator(seed, STREAM_GRAPH, 0).random(len(i))
    keep = u < p
    return _canonical(n, np.stack([i[keep], j[keep]], 1), "erdos_renyi")


def geometric(n: int, radius: float, seed: int) -> tuple[Graph, np.ndarray]:
    """Random geometric graph: points ``[n, 2]`` uniform in the unit square (keyed by
    ``seed``), an edge when ‖p_i − p_j‖ ≤ ``radius``. Returns the graph and the points."""
    _need(n, 2, "random geometric graph")
    pts = round_generator(seed, STREAM_GRAPH, 1).random((n, 2))
    i, j = np.triu_indices(n, 1)
    keep = np.linalg.norm(pts[i] - pts[j], axis=1) <= radius
    return _canonical(n, np.stack([i[keep], j[keep]], 1), "geometric"), pts


def from_edges(n: int, edges: Sequence[Sequence[int]] | np.ndarray,
               field: str = "topology.edges") -> Graph:
    """A user's edge list (pairs of node ids in ``[0, n)``; order and repeats do not matter)."""
    arr = np.asarray(edges, dtype=np.int64)
    if arr.size and (arr.ndim != 2 or arr.shape[1] != 2):
        raise ConfigError(f"{field}: a list of [i, j] pairs expected, got shape {arr.shape}")
    return _canonical(n, arr.reshape(-1, 2), "edges", field)


# ----------------------------------------------------------------------------- matrices

def laplacian(graph: Graph, rates: np.ndarray | None = None) -> np.ndarray:
    """float64 ``[n, n]``: ``Σ_{(i,j)∈E} λ_ij (e_i − e_j)(e_i − e_j)ᵀ`` (``rates`` ``[E]``,
    default 1: ``D − A``)."""
    w = np.ones(graph.num_edges) if rates is None else np.asarray(rates, dtype=np.float64)
    if w.shape != (graph.num_edges,):
        raise ValueError(f"rates: one per edge expected ({graph.num_edges}), got {w.shape}")
    q = np.zeros((graph.n, graph.n))
    i, j = graph.edges[:, 0], graph.edges[:, 1]
    np.add.at(q, (i, j), -w)
    np.add.at(q, (j, i), -w)
    np.add.at(q, (i, i), w)
    np.add.at(q, (j, j), w)
    return q


def components(graph: Graph) -> int:
    """Number of connected components (union–find over the edges)."""
    parent = np.arange(graph.n)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j in graph.edges.tolist():
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return len({find(a) for a in range(graph.n)})


def check_connected(graph: Graph, field: str = "topology") -> None:
    """ConfigError naming ``field`` when the graph has more than one connected component."""
    k = components(graph)
    if k > 1:
        raise ConfigError(f"{field}: the {graph.name} graph on {graph.n} nodes is disconnected "
                          f"({k} components); decentralized optimization needs a connected "
                          f"graph (raise topology.p / topology.radius, or add edges)")


def positive_spectrum(q: np.ndarray) -> tuple[float, float]:
    """(λ₂, λ_max) of a PSD Laplacian-like ``q`` of a connected graph (float64)."""
    ev = np.linalg.eigvalsh(q)
    return float(ev[1]), float(ev[-1])


def chi1(q: np.ndarray) -> float:
    """χ₁(Q) = 1/λ₂(Q)."""
    return 1.0 / positive_spectrum(q)[0]


def chi2(q: np.ndarray, edges: np.ndarray) -> float:
    """χ₂(Q) = ½ max over edges of (e_i − e_j)ᵀ Q⁺ (e_i − e_j)."""
    n = q.shape[0]
    pinv = np.linalg.inv(q + np.ones((n, n)) / n) - np.ones((n, n)) / n   # Q⁺ on a connected graph
    i, j = edges[:, 0], edges[:, 1]
    r = pinv[i, i] + pinv[j, j] - 2 * pinv[i, j]
    return 0.5 * float(r.max())


def dadao_rate(graph: Graph) -> float:
    """DADAO's uniform total communication rate ``λ_total = √(2 χ₁(L_u) χ₂(L_u))``,
    ``L_u = Lap/|E|`` (decentralized.md §1.8)."""
    lu = laplacian(graph) / graph.num_edges
    return float(np.sqrt(2 * chi1(lu) * chi2(lu, graph.edges)))


def metropolis_weights(graph: Graph) -> np.ndarray:
    """Metropolis–Hastings mixing matrix ``W`` float64 ``[n, n]``: ``W_ij = 1/(1 + max(d_i,
    d_j))`` on edges, ``W_ii = 1 − Σ_{j≠i} W_ij``; symmetric and doubly stochastic."""
    d = graph.degrees()
    w = np.zeros((graph.n, graph.n))
    i, j = graph.edges[:, 0], graph.edges[:, 1]
    v = 1.0 / (1.0 + np.maximum(d[i], d[j]))
    w[i, j] = v
    w[j, i] = v
    w[np.arange(graph.n), np.arange(graph.n)] = 1.0 - w.sum(1)
    return w
