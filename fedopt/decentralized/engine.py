"""The node-event engine every decentralized algorithm runs on (the virtual clock).

No server: n nodes (the data set's clients), node i holding a state (its model x_i ∈ R^P, flat
float64, and the algorithm's other variables), all stacked ``[n, P]`` on the run's device in
``ServerState.extra["decentralized"]["nodes"]`` (checkpointed). One ``run_round`` advances the
virtual clock by one time unit (one expected gradient per node; the last one may be shorter,
ending at ``algorithm.time_budget`` T), so ``eval_every`` counts time units. After each round
every node is brought to the round's end time (for DADAO: its linear ODE integrated there, which
changes nothing since the ODE is autonomous), and the round reports

* ``virtual_time``; ``gradient_steps`` and ``communications`` (cumulative: local gradient
  evaluations; pairwise exchanges, one per edge activation, |E| per synchronous gossip round);
* ``consensus_error`` = (1/n) Σ_i ‖x_i − x̄‖², x̄ = (1/n) Σ_i x_i;
* ``suboptimality`` = f(x̄) − f* and ``distance_to_opt`` = (1/n) Σ_i ‖x_i − x*‖², where
  f = (1/n) Σ_i f_i and (x*, f*) come once from a centralized float64 Newton solve
  (:meth:`~fedopt.decentralized.objective.NodeObjective.solve`; None when the model is not the
  built-in linear one);

and ``ServerState.params`` = x̄ in the run's dtype (what the test/train metrics evaluate).

Asynchronous algorithms consume the keyed Poisson stream
(:class:`~fedopt.decentralized.events.EventStream`). Events that touch disjoint node sets
commute (a gradient event changes only its node, a communication only its two), so consecutive
events are grouped greedily into batches of pairwise disjoint events (:func:`disjoint_batches`)
and each batch is applied at once — one batched gradient call for all its gradient events; the
result equals applying them one at a time (``batch_events: false``, the reference loop), up to
floating-point summation order in the batched gradient.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fedopt.algorithms.base import ServerState
from fedopt.decentralized.events import COMMUNICATION, GRADIENT, Events, EventStream
from fedopt.decentralized.graphs import Graph
from fedopt.decentralized.objective import NodeObjective
from fedopt.engine.program import LocalProgram
from fedopt.schema import ConfigError

KEY = "decentralized"


def disjoint_batches(events: Events, n: int) -> list[tuple[int, int]]:
    """Half-open index ranges ``[lo, hi)`` covering ``events`` in order, each a maximal run of
    consecutive events whose node sets are pairwise disjoint (greedy)."""
    mark = [-1] * n
    out, lo, bid = [], 0, 0
    a, b = events.a.tolist(), events.b.tolist()
    for k in range(len(a)):
        i, j = a[k], b[k]
        if mark[i] == bid or (j >= 0 and mark[j] == bid):
            out.append((lo, k))
            lo, bid = k, bid + 1
        mark[i] = bid
        if j >= 0:
            mark[j] = bid
    if len(a):
        out.append((lo, len(a)))
    return out


class NodeAlgorithm:
    """Base of the decentralized algorithms (see the module docstring). Subclasses define
    :meth:`init_nodes` (the stacked node state from the start points ``[n, P]``),
    :meth:`advance` (apply what happens in ``(t0, t1]``; returns the gradient events' nodes and
    the number of communications) and :meth:`models` (the ``[n, P]`` x_i at the round's end).

    ``graph``: the topology; ``time_budget`` T (time units); ``seed``: the run's;
    ``batch_events``: apply disjoint events in batches (False: one at a time)."""

    uses_stream = True

    def __init__(self, graph: Graph, time_budget: float, seed: int = 0,
                 batch_events: bool = True, l2: float = 0.0):
        self.graph = graph
        self.n = graph.n
        self.time_budget = float(time_budget)
        self.seed = int(seed)
        self.batch_events = bool(batch_events)
        self.l2 = float(l2)
        self.objective: NodeObjective | None = None
        self.stream: EventStream | None = None
        #: Ray mode (:mod:`fedopt.server.ray_nodes`): {num_shards, num_cpus, seconds_per_unit,
        #: on_node_failure}; None: the in-process engine
        self.remote: dict[str, Any] | None = None
        self._group: Any = None

    def __getstate__(self) -> dict[str, Any]:
        """Shipped to node actors without the master's actor handles."""
        return {**self.__dict__, "_group": None}

    # -- the run's hooks ---------------------------------------------------------------------
    def local_program(self) -> LocalProgram:
        return LocalProgram()

    def bind(self, data: Any, trainer: Any, model_name: str | None = None) -> None:
        """Called by the simulation once the data and model exist: the nodes' losses."""
        if data.num_clients != self.n:
            raise ConfigError(f"topology: built for {self.n} nodes, the data set has "
                              f"{data.num_clients} clients")
        names = [(k, tuple(v.shape)) for k, v in trainer.fmodel.module.named_parameters()
                 if v.requires_grad]
        loss = trainer.program.loss
        self.objective = NodeObjective(data, trainer.fmodel, trainer.program.loss_fn, names,
                                       self.l2, linear=model_name == "logreg",
                                       loss_name=loss if isinstance(loss, str) else None)
        self.on_bind()

    def on_bind(self) -> None:
        """Subclass hook after :meth:`bind` (constants that need the data)."""

    def event_rates(self) -> tuple[np.ndarray, np.ndarray]:
        """(gradient rates ``[n]``, edge rates ``[E]``) of the Poisson clocks."""
        raise NotImplementedError

    def init(self, params: dict[str, Tensor]) -> ServerState:
        if self.objective is None:
            raise RuntimeError("bind(data, trainer) first (the simulation does)")
        obj = self.objective
        self._template = {k: (v.dtype, v.device, tuple(v.shape)) for k, v in params.items()}
        x0 = obj.flatten(params).to(obj.device)
        ref = obj.solve(x0)
        d: dict[str, Any] = {
            "nodes": self.init_nodes(x0.unsqueeze(0).repeat(self.n, 1)),
            "time": 0.0, "event": 0, "event_time": 0.0, "gradient_steps": 0,
            "communications": 0,
            "x_star": None if ref is None else ref[0], "f_star": None if ref is None else ref[1]}
        return ServerState(params=dict(params), opt_state={}, round=0, extra={KEY: d})

    def init_nodes(self, x: Tensor) -> dict[str, Tensor]:
        return {"x": x}

    def models(self, nodes: dict[str, Tensor]) -> Tensor:
        return nodes["x"]

    def finished(self, state: ServerState) -> bool:
        return state.extra[KEY]["time"] >= self.time_budget

    def _stream(self) -> EventStream:
        if self.stream is None:
            g, e = self.event_rates()
            self.stream = EventStream(g, self.graph.edges, e, self.seed)
        return self.stream

    def run_round(self, state: ServerState, executor: Any = None, optimizer: Any = None
                  ) -> tuple[ServerState, dict[str, Any]]:
        d = state.extra[KEY]
        t0 = float(d["time"])
        t1 = min(t0 + 1.0, self.time_budget)
        position = (int(d["event"]), float(d["event_time"]))
        if self.uses_stream:
            stream = self._stream()
            stream.seek(*position)
            events = stream.until(t1)
            d["event"], d["event_time"] = stream.position
        else:
            events = None
        if self.remote is None:
            grad_nodes, comms = self.advance(d["nodes"], events, t0, t1)
            live = None
        else:
            grad_nodes, comms, live = self._advance_remote(d, events, position, t1,
                                                           state.round)
        d["time"] = t1
        d["gradient_steps"] += len(grad_nodes)
        d["communications"] += int(comms)
        x = self.models(d["nodes"])
        if live is not None:
            x = x[torch.as_tensor(live, device=x.device)]
        xbar = x.mean(0)
        stats: dict[str, Any] = {
            "updates": len(grad_nodes),
            "samples": int(self.objective.counts[grad_nodes].sum()) if len(grad_nodes) else 0,
            "virtual_time": t1, "gradient_steps": d["gradient_steps"],
            "communications": d["communications"],
            "consensus_error": float((x - xbar).pow(2).sum(1).mean())}
        if live is not None:
            stats["live_nodes"] = int(len(live))
        if d["f_star"] is not None:
            stats["suboptimality"] = self.objective.value(xbar) - d["f_star"]
            stats["distance_to_opt"] = float((x - d["x_star"]).pow(2).sum(1).mean())
        params = {}
        for (name, (dtype, device, shape)), v in zip(
                self._template.items(), self.objective.unflatten(xbar.unsqueeze(0)).values()):
            params[name] = v[0].reshape(shape).to(device=device, dtype=dtype)
        return dataclasses.replace(state, params=params, round=state.round + 1), stats

    # -- Ray mode: the nodes on actors (fedopt.server.ray_nodes) -------------------------------
    def _advance_remote(self, d: dict[str, Any], events: Events, position: tuple[int, float],
                        t1: float, round_idx: int) -> tuple[np.ndarray, int, np.ndarray]:
        """The round's events on the node actors (each node's events in stream order, so the
        states equal :meth:`advance`'s up to round-off); (gradient nodes, communications,
        live nodes) counting only the events among nodes alive after the round."""
        from fedopt.server.ray_nodes import NodeGroup

        if self._group is None:
            dead = d.get("dead")
            self._group = NodeGroup(self, {k: v.cpu() for k, v in d["nodes"].items()},
                                    dead=None if dead is None else dead.cpu().numpy(),
                                    **self.remote)
        self._group.run_round(d["nodes"], position, float(d["time"]), t1, round_idx)
        dead = self._group.dead
        d["dead"] = torch.as_tensor(dead)
        ok_a = ~dead[events.a]
        ok_b = (events.b < 0) | ~dead[np.maximum(events.b, 0)]
        grads = events.a[(events.kind == GRADIENT) & ok_a]
        comms = int(((events.kind == COMMUNICATION) & ok_a & ok_b).sum())
        return grads, comms, np.flatnonzero(~dead)

    def close(self, executor: Any = None) -> None:
        """Stop the node actors (Ray mode)."""
        if self._group is not None:
            self._group.close()
            self._group = None

    # -- subclass API ------------------------------------------------------------------------
    def advance(self, nodes: dict[str, Tensor], events: Events | None, t0: float, t1: float
                ) -> tuple[np.ndarray, int]:
        """Apply the events of ``(t0, t1]`` to ``nodes`` in place; returns (int64 nodes of the
        gradient events, number of communications)."""
        n_comm = int((events.kind == COMMUNICATION).sum())
        grads = events.a[events.kind == GRADIENT]
        ranges = (disjoint_batches(events, self.n) if self.batch_events
                  else [(k, k + 1) for k in range(len(events))])
        for lo, hi in ranges:
            self.apply(nodes, events.time[lo:hi], events.kind[lo:hi], events.a[lo:hi],
                       events.b[lo:hi])
        self.finish(nodes, t1)
        return grads, n_comm

    def apply(self, nodes: dict[str, Tensor], time: np.ndarray, kind: np.ndarray,
              a: np.ndarray, b: np.ndarray) -> None:
        """Apply events on pairwise disjoint node sets (one batch)."""
        raise NotImplementedError

    def finish(self, nodes: dict[str, Tensor], t1: float) -> None:
        """Bring every node to time ``t1`` (nothing to do for memoryless states)."""


def uniform_edge_rates(graph: Graph, total: float) -> np.ndarray:
    """``λ_ij = total/|E|`` on every edge."""
    return np.full(graph.num_edges, total / graph.num_edges)


def boyd_edge_rates(graph: Graph) -> np.ndarray:
    """Randomized gossip's rates (Boyd et al. 2006): every node ticks at rate 1 and picks a
    uniform neighbour, so edge (i, j) fires at rate 1/d_i + 1/d_j (total n)."""
    d = graph.degrees().astype(np.float64)
    return 1.0 / d[graph.edges[:, 0]] + 1.0 / d[graph.edges[:, 1]]


def as_index(a: np.ndarray, device: torch.device) -> Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.int64), device=device)


def check_finite_rate(value: float, field: str) -> None:
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{field}: must be a finite number > 0, got {value!r}")


def bind_smoothness(alg: Any) -> None:
    """Set an accelerated algorithm's constants from L and μ: ``algorithm.L`` / ``algorithm.mu``
    where given (``alg._L``, ``alg._mu``), else the bounds of the nodes' Hessians
    (``alg.objective.smoothness()``: L = max_i L_i, μ = min_i μ_i), through
    ``alg._set_constants(L, μ)``. ConfigError naming ``algorithm.L`` when the bounds are not
    known (a model without a closed-form Hessian)."""
    if alg._L is not None and alg._mu is not None:
        return
    try:
        big, small = alg.objective.smoothness()
    except ValueError as e:
        raise ConfigError(f"algorithm.L: {e}; give algorithm.L and algorithm.mu") from None
    alg._set_constants(alg._L if alg._L is not None else float(big.max()),
                       alg._mu if alg._mu is not None else float(small.min()))
