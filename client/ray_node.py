"""A shard of decentralized nodes as one Ray actor (issue 13's Ray mode; the master side is
:mod:`fedopt.server.ray_nodes`).

The actor owns the states of its nodes (rows of the algorithm's stacked node state, e.g.
DADAO's ``s [n, 6, P]`` and ``t [n]``) and runs, in real time, every event of the keyed Poisson
stream (:class:`~fedopt.decentralized.events.EventStream`) that touches one of them, in stream
order:

* a gradient event of an own node: the algorithm's own ``apply`` on that node;
* a communication on edge (i, j), i own: when j is own too, ``apply`` here; otherwise the two
  owners exchange parameters *directly* — each sends its node's state to the other
  (:meth:`NodeShard.deliver`, an actor call into the peer's mailbox), waits for the peer's,
  and both apply the same pairwise update to the same two states, each keeping its own node.

The event sequence is a pure function of (seed, k), so every actor knows it without a master,
and each node sees its events in the virtual clock's order: the run equals the in-process one
(``batch_events: false``, one event at a time) up to float round-off whatever the real timings.
``seconds_per_unit`` paces the events: event k is applied no earlier than ``t_k ·
seconds_per_unit`` seconds after the run's real start (the clock's times injected as delays).

A dead peer (its actor killed) makes the master call :meth:`NodeShard.node_failed`: events with
its nodes are skipped from then on (``executor.on_node_failure: continue``), or
:meth:`NodeShard.abort` ends the round with an error (``error``); a mailbox wait never blocks
forever (``wait_s``).
"""
from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import torch

from fedopt.decentralized.events import GRADIENT


class NodeAborted(RuntimeError):
    """The master ended the round (a node actor died and the policy is ``error``)."""


class NodeShard:
    """Owns nodes ``owner == shard`` of a bound decentralized algorithm (module docstring).

    ``alg``: the bound :class:`~fedopt.decentralized.engine.NodeAlgorithm`, its objective
    restricted to this shard's nodes (:func:`fedopt.server.ray_nodes.shard_algorithm`: only
    their rows); ``owner``: int64 ``[n]`` shard of every node; ``rows``: this shard's node
    states ``{key: [m, ...]}`` (``m`` own nodes, in node order)."""

    def __init__(self, alg: Any, shard: int, owner: np.ndarray, rows: dict[str, np.ndarray],
                 num_threads: int | None = None, wait_s: float = 600.0):
        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.alg, self.shard = alg, int(shard)
        self.owner = np.asarray(owner, dtype=np.int64)
        self.own = np.flatnonzero(self.owner == self.shard)
        self.wait_s = float(wait_s)
        n = len(self.owner)
        # the full stacked state; only own rows (and, for one event, a peer's row) are valid
        self.nodes = {k: torch.zeros((n,) + tuple(v.shape[1:]),
                                     dtype=torch.from_numpy(np.array(v)).dtype)
                      for k, v in rows.items()}
        self.set_rows(rows)
        self.peers: list[Any] = []
        self.dead = np.zeros(n, dtype=bool)
        self._mail: dict[tuple[int, int], dict[str, np.ndarray]] = {}
        self._cond = threading.Condition()
        self._aborted = False

    # -- set-up and state ------------------------------------------------------------------
    def set_peers(self, peers: list[Any]) -> None:
        self.peers = list(peers)

    def set_rows(self, rows: dict[str, np.ndarray]) -> None:
        for k, v in rows.items():
            self.nodes[k][torch.as_tensor(self.own)] = torch.from_numpy(np.array(v))

    def rows(self) -> dict[str, np.ndarray]:
        return {k: v[torch.as_tensor(self.own)].numpy().copy() for k, v in self.nodes.items()}

    def ping(self) -> int:
        return self.shard

    def held_rows(self) -> int:
        """Train rows of the data this actor holds (its objective's)."""
        return int(self.alg.objective.x.shape[0])

    # -- messages ------------------------------------------------------------------------------
    def deliver(self, k: int, node: int, state: dict[str, np.ndarray]) -> None:
        """A peer's node ``node`` state for event ``k`` (before the event)."""
        with self._cond:
            self._mail[(int(k), int(node))] = state
            self._cond.notify_all()

    def node_failed(self, nodes: list[int]) -> None:
        """Nodes whose actor died: their events are skipped from now on."""
        with self._cond:
            self.dead[np.asarray(nodes, dtype=np.int64)] = True
            self._cond.notify_all()

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._cond.notify_all()

    def _receive(self, k: int, node: int) -> dict[str, np.ndarray] | None:
        """The peer's state for event k, or None when its node died meanwhile."""
        with self._cond:
            ok = self._cond.wait_for(lambda: (k, node) in self._mail or self.dead[node]
                                     or self._aborted, timeout=self.wait_s)
            if self._aborted:
                raise NodeAborted(f"node actor {self.shard}: the run was stopped")
            if not ok:
                raise TimeoutError(f"node actor {self.shard}: no state of node {node} for "
                                   f"event {k} within {self.wait_s:g} s")
            return self._mail.pop((k, node), None)

    # -- a round ---------------------------------------------------------------------------------
    def run_until(self, position: tuple[int, float], t1: float, start_at: float,
                  seconds_per_unit: float | None, dead: list[int],
                  nodes: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        """Apply every event after ``position`` (stream index, time) up to virtual time ``t1``
        that touches an own node, starting from the own rows of ``nodes`` (the master's stacked
        state ``[n, ...]``: a restored checkpoint; None: where the last round left them);
        ``start_at``: the run's real start (``time.time()``) for the pacing. Returns the own rows, brought to ``t1`` (``alg.finish``), and the stream
        indices of the events applied here (``events``, in order)."""
        alg = self.alg
        with self._cond:
            self.dead[np.asarray(dead, dtype=np.int64)] = True
            self._aborted = False
        if nodes is not None:
            self.set_rows({k: np.asarray(v)[self.own] for k, v in nodes.items()})
        stream = alg._stream()
        stream.seek(*position)
        ev = stream.until(t1)
        mine = self.owner == self.shard
        touches = mine[ev.a] | ((ev.b >= 0) & mine[np.maximum(ev.b, 0)])
        keys = [k for k in self.nodes if self.nodes[k].shape[:1] == (len(self.owner),)]
        applied: list[int] = []
        k0 = position[0]
        for e in np.flatnonzero(touches):
            a, b, kind = int(ev.a[e]), int(ev.b[e]), int(ev.kind[e])
            if self.dead[a] or (b >= 0 and self.dead[b]):
                continue
            if seconds_per_unit is not None:
                wait = start_at + float(ev.time[e]) * seconds_per_unit - time.time()
                if wait > 0:
                    time.sleep(wait)
            if kind != GRADIENT and not (mine[a] and mine[b]):
                me, peer = (a, b) if mine[a] else (b, a)
                k = k0 + int(e)
                idx = torch.as_tensor([me])
                out = {key: self.nodes[key][idx].numpy().copy() for key in keys}
                self.peers[int(self.owner[peer])].deliver.remote(k, me, out)
                got = self._receive(k, peer)
                if got is None:             # the peer died before sending: no exchange
                    continue
                pidx = torch.as_tensor([peer])
                for key in keys:
                    self.nodes[key][pidx] = torch.from_numpy(np.array(got[key]))
            sl = slice(e, e + 1)
            alg.apply(self.nodes, ev.time[sl], ev.kind[sl], ev.a[sl], ev.b[sl])
            applied.append(k0 + int(e))
        alg.finish(self.nodes, t1)
        return {"rows": self.rows(), "events": np.asarray(applied, dtype=np.int64)}
