"""Decentralized nodes on Ray actors: the master side (the actors: :mod:`fedopt.client.ray_node`).

``executor.name: ray`` with an asynchronous decentralized algorithm (``gossip``, ``dadao``) puts
the n nodes in ``executor.num_workers`` shard actors (contiguous blocks of node ids, so a ring's
or a grid's neighbours mostly share an actor); each round (one virtual time unit) every actor
runs its nodes' events of the keyed stream in real time, exchanging parameters with the actors
of their neighbours directly, and returns its rows (an actor holds the data rows of its own
nodes only: :func:`shard_algorithm`); the master starts the round from its stacked
state (one object-store copy: so a restored checkpoint restarts the actors exactly), collects
the rows for the metrics and checkpoints, and watches for dead actors.

A node actor that dies (killed, its node lost) is handled by ``executor.on_node_failure``:

* ``error`` (default): the surviving actors are told to stop and the run raises
  :class:`NodeFailedError` naming the actor, its nodes and the round — never a hang;
* ``continue``: the survivors skip every later event with its nodes (its gradient events and
  the exchanges on its edges) and the run goes on without them; the metrics then cover the
  live nodes only (``live_nodes`` in the rows). Its nodes' last states stay in the master's
  stacked state (checkpoints keep them) but take no further part.
"""
from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch

from fedopt.server.faults import failure_cause
from fedopt.server.ray_pool import death_errors

POLICIES = ("error", "continue")


class NodeFailedError(RuntimeError):
    """A node actor died and ``executor.on_node_failure`` is ``error``."""


def shard_of(n: int, shards: int) -> np.ndarray:
    """int64 ``[n]``: node i's actor ⌊i·S/n⌋ (contiguous blocks, sizes differing by ≤ 1)."""
    return (np.arange(n, dtype=np.int64) * shards) // n


def shard_algorithm(alg: Any, own: np.ndarray) -> Any:
    """What node actor ``own`` receives: a shallow copy of the bound algorithm whose objective
    holds only the rows of its nodes ``own`` (:meth:`NodeObjective.restricted`): an actor
    computes gradients of its own nodes only, so it needs no other node's data."""
    out = copy.copy(alg)
    out.objective = alg.objective.restricted(own)
    return out


class NodeGroup:
    """The node actors of one run (module docstring). ``alg``: the bound algorithm; ``nodes``:
    its stacked node state ``{key: [n, ...]}`` to start from (CPU tensors)."""

    def __init__(self, alg: Any, nodes: dict[str, torch.Tensor], num_shards: int,
                 num_cpus: float = 1.0, num_threads: int | None = 1,
                 seconds_per_unit: float | None = None, on_node_failure: str = "error",
                 dead: np.ndarray | None = None):
        import ray

        from fedopt.client.ray_node import NodeShard

        if on_node_failure not in POLICIES:
            raise ValueError(f"on_node_failure: one of {POLICIES}, got {on_node_failure!r}")
        self.ray = ray
        n = next(iter(nodes.values())).shape[0]
        self.num_shards = min(int(num_shards), n)
        self.owner = shard_of(n, self.num_shards)
        self.spu, self.policy = seconds_per_unit, on_node_failure
        self.dead = np.zeros(n, dtype=bool) if dead is None else np.asarray(dead, bool).copy()
        self.alive = np.ones(self.num_shards, dtype=bool)
        self.alive[[s for s in range(self.num_shards)
                    if self.dead[self.owner == s].all()]] = False
        cls = ray.remote(NodeShard)
        self.actors = []
        for s in range(self.num_shards):
            own = np.flatnonzero(self.owner == s)
            rows = {k: v[torch.as_tensor(own)].cpu().numpy() for k, v in nodes.items()}
            self.actors.append(cls.options(num_cpus=num_cpus, max_concurrency=8,
                                           max_restarts=0).remote(
                shard_algorithm(alg, own), s, self.owner, rows, num_threads))
        ray.get([a.set_peers.remote(self.actors) for a in self.actors])
        self.start_at: float | None = None
        #: stream indices of the events the actors applied in the last round (sorted; an
        #: exchange between two actors is applied by both and listed once)
        self.last_events = np.zeros(0, dtype=np.int64)

    def nodes_of(self, shard: int) -> list[int]:
        return np.flatnonzero(self.owner == shard).tolist()

    def run_round(self, nodes: dict[str, torch.Tensor], position: tuple[int, float],
                  t0: float, t1: float, round_idx: int) -> None:
        """Every live actor runs the events after ``position`` up to ``t1``; their rows are
        written into ``nodes`` (in place) and the events they applied into
        :attr:`last_events`. NodeFailedError under ``error`` when an actor dies."""
        ray = self.ray
        if self.start_at is None:       # the real instant of virtual time t0
            self.start_at = time.time() - (t0 * self.spu if self.spu else 0.0)
        dead = np.flatnonzero(self.dead).tolist()
        # the round starts from the master's state (the source of truth: a restored checkpoint
        # or the rows the actors returned last round), one object-store copy for every actor
        start = ray.put({k: v.cpu().numpy() for k, v in nodes.items()})
        refs = {self.actors[s].run_until.remote(position, t1, self.start_at, self.spu, dead,
                                                start): s
                for s in range(self.num_shards) if self.alive[s]}
        applied = [np.zeros(0, dtype=np.int64)]
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                s = refs[ref]
                try:
                    out = ray.get(ref)
                except death_errors() as e:
                    self._failed(s, round_idx, failure_cause(e))
                    continue
                applied.append(np.asarray(out["events"], dtype=np.int64))
                own = torch.as_tensor(np.flatnonzero(self.owner == s))
                for k, v in out["rows"].items():
                    if k in nodes:
                        nodes[k][own] = torch.from_numpy(np.array(v)).to(nodes[k].device,
                                                              nodes[k].dtype)
        self.last_events = np.unique(np.concatenate(applied))

    def _failed(self, shard: int, round_idx: int, cause: str) -> None:
        """Actor ``shard`` died: stop everybody (``error``) or let the survivors skip its
        nodes (``continue``)."""
        self.alive[shard] = False
        lost = self.nodes_of(shard)
        self.dead[lost] = True
        survivors = [a for s, a in enumerate(self.actors) if self.alive[s]]
        if self.policy == "error":
            for a in survivors:
                a.abort.remote()
            raise NodeFailedError(
                f"node actor {shard} (nodes {lost}) died in round {round_idx} ({cause}); "
                f"executor.on_node_failure is 'error' (set it to 'continue' to go on without "
                f"those nodes)")
        if not survivors:
            raise NodeFailedError(f"every node actor died (round {round_idx}, {cause})")
        self.ray.get([a.node_failed.remote(lost) for a in survivors])

    def close(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:
                pass
        self.actors = []
