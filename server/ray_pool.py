"""The pool of Ray worker actors: placement, start, health, restart, and who runs which client.

``num_workers`` = W actors, each reserving ``num_cpus_per_worker`` CPUs and
``num_gpus_per_worker`` GPUs (fractions allowed: 0.25 puts four workers on one GPU) in one
placement group whose bundles are spread over the cluster's nodes (``strategy="SPREAD"``,
best effort; ``"PACK"`` keeps them together). Worker ``j`` (a *slot*) owns the clients
``i ≡ j (mod W)``. A slot whose actor died or hung gets a replacement actor in the same bundle,
started in the background; until it reports ready, its clients are reassigned to the live slots
(``i → live[i mod |live|]``), which load their rows on demand.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedopt.client.ray_worker import ShardWorker, WorkerSpec
from fedopt.client.shard import fingerprints_match
from fedopt.server.faults import FaultLog, RayPoolError, failure_cause

log = logging.getLogger("server.ray")

def death_errors() -> tuple[type[BaseException], ...]:
    """Ray errors that mean "the worker is gone", as opposed to an error in the user's code."""
    import ray.exceptions as rex

    return (rex.RayActorError, rex.WorkerCrashedError, rex.NodeDiedError, rex.OutOfMemoryError,
            rex.ObjectLostError, rex.OwnerDiedError)


@dataclass
class Slot:
    """One worker position: its current actor and its state (starting | ready | dead)."""

    index: int
    actor: Any = None
    ready_ref: Any = None
    state: str = "starting"
    info: dict[str, Any] = field(default_factory=dict)
    starts: int = 0


def gpu_plan(device: str, num_gpus_per_worker: float, cluster_gpus: float) -> tuple[str, float, str | None]:
    """(worker device, GPUs reserved per worker, note) with the CPU fallback rules:

    GPUs requested and present -> ``cuda`` on each worker's own (fraction of a) GPU;
    GPUs requested, none in the cluster -> ``cpu``, nothing reserved;
    ``executor.device`` cuda but no GPUs requested -> ``cpu`` (Ray hides unreserved GPUs).
    """
    if num_gpus_per_worker > 0:
        if cluster_gpus <= 0:
            return "cpu", 0.0, ("executor.num_gpus_per_worker > 0 but the Ray cluster has no GPU: "
                                "workers run on cpu")
        return "cuda", float(num_gpus_per_worker), None
    if device.startswith("cuda"):
        return "cpu", 0.0, ("executor.device is cuda but executor.num_gpus_per_worker is 0: Ray "
                            "workers run on cpu (give e.g. num_gpus_per_worker: 0.25)")
    return device, 0.0, None


class WorkerPool:
    """Starts and keeps W :class:`~client.ray_worker.ShardWorker` actors (see module doc)."""

    def __init__(self, spec: WorkerSpec, *, num_clients: int, num_workers: int,
                 num_cpus_per_worker: float, num_gpus_per_worker: float, faults: FaultLog,
                 strategy: str = "SPREAD", placement_timeout_s: float = 60.0,
                 start_timeout_s: float = 300.0, max_restarts_per_worker: int = 5,
                 max_concurrency: int = 32, expected_fingerprint: dict | None = None):
        import ray

        self.ray = ray
        self.spec = spec
        self.num_clients = int(num_clients)
        self.num_workers = int(num_workers)
        self.num_cpus = float(num_cpus_per_worker)
        self.num_gpus = float(num_gpus_per_worker)
        self.faults = faults
        self.strategy = strategy
        self.placement_timeout_s = placement_timeout_s
        self.start_timeout_s = start_timeout_s
        self.max_restarts_per_worker = max_restarts_per_worker
        self.max_concurrency = max_concurrency
        self.expected_fingerprint = expected_fingerprint
        self.slots = [Slot(j) for j in range(self.num_workers)]
        self.placement_group = None
        self._spec_ref = None
        self._actor_cls = ray.remote(ShardWorker)

    # -- start ----------------------------------------------------------------------------------
    def _bundle(self) -> dict[str, float]:
        b = {}
        if self.num_cpus > 0:
            b["CPU"] = self.num_cpus
        if self.num_gpus > 0:
            b["GPU"] = self.num_gpus
        return b

    def _place(self) -> None:
        from ray.util.placement_group import placement_group, remove_placement_group

        bundle = self._bundle()
        if not bundle or not self.num_workers:
            return
        pg = placement_group([dict(bundle) for _ in range(self.num_workers)], strategy=self.strategy)
        try:
            self.ray.get(pg.ready(), timeout=self.placement_timeout_s)
        except self.ray.exceptions.GetTimeoutError:
            remove_placement_group(pg)
            total = {k: v for k, v in self.ray.cluster_resources().items() if k in ("CPU", "GPU")}
            avail = {k: v for k, v in self.ray.available_resources().items() if k in ("CPU", "GPU")}
            raise RayPoolError(
                f"executor.num_workers: cannot place {self.num_workers} Ray workers of {bundle} "
                f"each within {self.placement_timeout_s:g} s (cluster total {total}, available "
                f"{avail}); lower executor.num_workers, executor.num_cpus_per_worker or "
                f"executor.num_gpus_per_worker, or add nodes") from None
        self.placement_group = pg

    def _launch(self, slot: Slot) -> None:
        opts: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus,
                                "max_concurrency": self.max_concurrency, "max_restarts": 0}
        if self.placement_group is not None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                self.placement_group, placement_group_bundle_index=slot.index)
        else:
            opts["scheduling_strategy"] = "SPREAD"
        shard = np.arange(slot.index, self.num_clients, self.num_workers)
        slot.actor = self._actor_cls.options(**opts).remote(self._spec_ref, slot.index, shard)
        slot.ready_ref = slot.actor.info.remote()
        slot.state = "starting"
        slot.starts += 1

    def start(self) -> None:
        """Place and start all W workers; wait until every one has built its shard. W = 0 (a
        run whose algorithm trains no clients on workers, e.g. decentralized node actors):
        nothing to start."""
        if not self.slots:
            return
        self._spec_ref = self.ray.put(self.spec)
        self._place()
        for slot in self.slots:
            self._launch(slot)
        refs = [s.ready_ref for s in self.slots]
        done, pending = self.ray.wait(refs, num_returns=len(refs), timeout=self.start_timeout_s)
        if pending:
            self.close()
            raise RayPoolError(f"Ray workers did not start within {self.start_timeout_s:g} s "
                               f"({len(pending)} of {len(refs)} pending): the cluster may lack "
                               f"the resources asked for (executor.num_workers x "
                               f"executor.num_cpus_per_worker / num_gpus_per_worker)")
        for slot in self.slots:
            try:
                self._accept(slot, self.ray.get(slot.ready_ref))
            except Exception as e:
                self.close()
                if isinstance(e, ValueError):
                    raise
                raise RayPoolError(f"Ray worker {slot.index} failed to start: "
                                   f"{failure_cause(e)}") from None

    def _accept(self, slot: Slot, info: dict[str, Any]) -> None:
        fp = info.get("fingerprint")
        if self.expected_fingerprint is not None and not fingerprints_match(fp, self.expected_fingerprint):
            raise ValueError(
                "executor.name=ray: the workers rebuild the data set from config['data'] and the "
                "seed, and got a different one than the coordinator's (a data set passed to "
                "fedopt.run(dataset=...) cannot be shipped to Ray workers: save it as an npz file "
                "and use data: {name: npz, path: ...})")
        if info.get("device_note"):
            log.warning("ray worker %d: %s", slot.index, info["device_note"])
        slot.info = info
        slot.state = "ready"
        slot.ready_ref = None

    # -- health ---------------------------------------------------------------------------------
    def live(self) -> list[int]:
        return [s.index for s in self.slots if s.state == "ready"]

    def poll(self, timeout: float = 0.0) -> None:
        """Promote restarted workers that have become ready (waits up to ``timeout`` for one)."""
        starting = [s for s in self.slots if s.state == "starting"]
        if not starting:
            return
        refs = [s.ready_ref for s in starting]
        if timeout > 0:
            self.ray.wait(refs, num_returns=1, timeout=timeout)
        done, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
        done = set(done)
        for slot in starting:
            if slot.ready_ref not in done:
                continue
            try:
                self._accept(slot, self.ray.get(slot.ready_ref))
            except ValueError:
                raise
            except Exception as e:
                self.restart(slot.index, f"replacement failed to start: {e}", round_idx=None)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until no worker is starting (or ``timeout``); True when all slots are ready."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while any(s.state == "starting" for s in self.slots):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            self.poll(timeout=min(1.0, left) if left is not None else 1.0)
        return all(s.state == "ready" for s in self.slots)

    def restart(self, index: int, reason: str, round_idx: int | None) -> None:
        """Kill slot ``index``'s actor (if alive) and start a replacement in its bundle."""
        slot = self.slots[index]
        if slot.actor is not None:
            try:
                self.ray.kill(slot.actor, no_restart=True)
            except Exception:
                pass
        if slot.starts > self.max_restarts_per_worker:
            slot.state, slot.actor, slot.ready_ref = "dead", None, None
            log.error("ray worker %d: given up after %d starts (%s)", index, slot.starts, reason)
            return
        self._launch(slot)
        self.faults.record("restarts", round_idx=round_idx, slot=index, detail=reason)

    def restart_if_current(self, index: int, actor: Any, reason: str,
                           round_idx: int | None) -> None:
        """:meth:`restart` slot ``index`` unless ``actor`` was already replaced there."""
        if self.slots[index].actor is actor:
            self.restart(index, reason, round_idx)

    # -- assignment -----------------------------------------------------------------------------
    def assign(self, client_ids: np.ndarray, exclude: set[int] = frozenset(),
               wait_s: float | None = None) -> np.ndarray:
        """Slot of each client: its home ``i mod W`` when ready, else ``live[i mod |live|]``.

        With no live slot it waits (up to ``wait_s``, default the start timeout) for a
        replacement to come up; raises :class:`~server.faults.RayPoolError` when none does.
        """
        self.poll()
        live = [j for j in self.live() if j not in exclude]
        if not live:
            self.wait_ready_any(self.start_timeout_s if wait_s is None else wait_s)
            live = [j for j in self.live() if j not in exclude] or self.live()
        if not live:
            raise RayPoolError("no Ray worker is alive (all died and could not be restarted); "
                               "check the workers (memory, killed processes, lost nodes)")
        ids = np.asarray(client_ids, dtype=np.int64)
        home = ids % self.num_workers
        ok = np.isin(home, live)
        fallback = np.asarray(live)[ids % len(live)]
        return np.where(ok, home, fallback)

    def wait_ready_any(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.live() and any(s.state == "starting" for s in self.slots):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.poll(timeout=min(1.0, left))

    def actor(self, index: int):
        return self.slots[index].actor

    # -- stop -----------------------------------------------------------------------------------
    def close(self) -> None:
        for slot in self.slots:
            if slot.actor is not None:
                try:
                    self.ray.kill(slot.actor, no_restart=True)
                except Exception:
                    pass
            slot.actor, slot.ready_ref, slot.state = None, None, "dead"
        if self.placement_group is not None:
            from ray.util.placement_group import remove_placement_group

            try:
                remove_placement_group(self.placement_group)
            except Exception:
                pass
            self.placement_group = None
