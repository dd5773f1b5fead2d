"""fedopt.server.dispatch without Ray: the policy's decisions, renormalisation, and the scatter/gather
loop over a fake transport whose workers answer, die or hang on a fake clock."""
import numpy as np
import pytest
import torch

from fedopt.server.dispatch import (Action, CallFailed, DispatchPolicy, gather, renormalise)
from fedopt.server.faults import FaultLog, WorkerFailedError


# -- the policy -----------------------------------------------------------------------------

def test_policy_validates_its_settings():
    with pytest.raises(ValueError, match="on_timeout"):
        DispatchPolicy(on_timeout="ignore")
    with pytest.raises(ValueError, match="max_retries"):
        DispatchPolicy(max_retries=-1)
    with pytest.raises(ValueError, match="round_timeout_s"):
        DispatchPolicy(round_timeout_s=0.0)
    assert DispatchPolicy(round_timeout_s=2.0).deadline(10.0) == 12.0
    assert DispatchPolicy().deadline(10.0) is None


def test_failed_shares_are_retried_until_max_retries():
    p = DispatchPolicy(max_retries=2)
    assert [p.on_failure(a).action for a in range(3)] == [Action.RETRY, Action.RETRY, Action.FAIL]


@pytest.mark.parametrize("on_timeout,need_all,alone,attempt,want", [
    ("drop", False, False, 0, Action.DROP),     # FedAvg's rule
    ("drop", False, True, 0, Action.RETRY),     # never a call without any job
    ("drop", False, True, 1, Action.DROP),      # ... while retries last
    ("retry", False, False, 0, Action.RETRY),
    ("retry", False, False, 1, Action.DROP),    # retries used up: dropped
    ("drop", True, False, 0, Action.RETRY),     # per-client results needed
    ("drop", True, False, 1, Action.FAIL),
])
def test_late_shares(on_timeout, need_all, alone, attempt, want):
    p = DispatchPolicy(max_retries=1, round_timeout_s=1.0, on_timeout=on_timeout)
    assert p.on_late(attempt, need_all=need_all, alone=alone).action is want


def test_renormalise_is_fedavg_over_the_returned_jobs():
    w = np.array([0.2, 0.3, 0.5])
    deltas = torch.tensor([[1.0], [2.0], [4.0]], dtype=torch.float64)
    kept = np.array([True, False, True])
    part = {"x": (torch.as_tensor(w[kept])[:, None] * deltas[kept]).sum(0)}
    got, loss = renormalise(part, 0.7, float(w.sum()), float(w[kept].sum()))
    want = (w[kept] / w[kept].sum()) @ deltas[kept].numpy()
    np.testing.assert_allclose(got["x"].numpy(), want)
    assert loss == pytest.approx(0.7 / 0.7)
    same, l2 = renormalise(part, 0.7, 1.0, 1.0)
    assert same is part and l2 == 0.7


# -- the loop over a fake transport -----------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class FakeWorkers:
    """W workers; client i goes to worker i mod W (or another live one, excluded ones avoided).
    ``behaviour[(slot, attempt)]`` is "ok", "die" or "hang"; answers are the positions' sum."""

    def __init__(self, clock, num_workers=2, behaviour=None):
        self.clock, self.W = clock, num_workers
        self.behaviour = behaviour or {}
        self.sends = []
        self.replaced = []

    def send(self, positions, exclude):
        ids = positions                       # ids == positions in these tests
        home = ids % self.W
        live = [s for s in range(self.W) if s not in exclude] or list(range(self.W))
        slots = np.where(np.isin(home, live), home, np.asarray(live)[ids % len(live)])
        out = []
        for s in np.unique(slots):
            pos = positions[slots == s]
            attempt = sum(1 for (sl, _) in self.sends if sl == int(s))
            self.sends.append((int(s), tuple(pos.tolist())))
            out.append((pos, int(s), self.behaviour.get((int(s), attempt), "ok")))
        return out

    def ready(self, calls, timeout):
        done = [c for c in calls if c.handle in ("ok", "die")]
        if not done and timeout is not None:
            self.clock.t += timeout              # the hung ones run into their deadline
        return done

    def result(self, call):
        if call.handle == "die":
            raise CallFailed("ActorDiedError: worker killed")
        return int(call.positions.sum())

    def replace(self, call, reason):
        self.replaced.append((call.slot, reason))


def run(behaviour, policy, need_all=False, n=6, W=2):
    clock = FakeClock()
    workers = FakeWorkers(clock, W, behaviour)
    faults = FaultLog()
    got = gather(workers, np.arange(n), policy, faults, key=3, need_all=need_all, clock=clock)
    return got, workers, faults.summary()


def test_all_answer():
    got, workers, faults = run({}, DispatchPolicy())
    assert [c.slot for c, _ in got.results] == [0, 1]
    assert sum(r for _, r in got.results) == sum(range(6))
    assert got.retried == 0 and got.dropped == [] and sum(faults.values()) == 0


def test_a_dead_worker_is_replaced_and_its_share_resent_once():
    got, workers, faults = run({(1, 0): "die"}, DispatchPolicy(max_retries=2))
    assert sum(r for _, r in got.results) == sum(range(6))      # every job exactly once
    assert workers.replaced == [(1, "died")]
    assert faults["worker_deaths"] == 1 and faults["retried_shards"] == 1
    assert workers.sends[-1] == (0, (1, 3, 5))                   # re-sent to the live worker


def test_a_share_that_keeps_dying_fails_naming_max_retries():
    with pytest.raises(WorkerFailedError, match="max_retries=1"):
        run({(1, 0): "die", (0, 1): "die"}, DispatchPolicy(max_retries=1))


def test_a_straggler_is_dropped_under_drop():
    got, workers, faults = run({(1, 0): "hang"}, DispatchPolicy(round_timeout_s=5.0))
    assert got.dropped == [1, 3, 5]
    assert [c.slot for c, _ in got.results] == [0]
    assert faults["timeouts"] == 1 and faults["dropped_clients"] == 3
    assert workers.replaced == [(1, "timed out")]


def test_a_straggler_is_resent_when_per_client_results_are_needed():
    got, _, faults = run({(1, 0): "hang"}, DispatchPolicy(round_timeout_s=5.0), need_all=True)
    assert got.dropped == [] and sum(r for _, r in got.results) == sum(range(6))
    assert faults["retried_shards"] == 1


def test_a_call_is_never_left_without_any_job():
    got, _, faults = run({(0, 0): "hang"}, DispatchPolicy(round_timeout_s=5.0), n=1, W=1)
    assert got.dropped == [] and [r for _, r in got.results] == [0]
    assert faults["retried_shards"] == 1


def test_fault_messages_name_the_executor_that_ran():
    """A gRPC fleet's failures and fault log say gRPC client process, never Ray (and Ray's
    still say Ray worker): the transport is named by the FaultLog's executor."""
    import logging

    clock = FakeClock()
    grpc_log = FaultLog("grpc")
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append((record.name, record.getMessage()))

    handler = Keep()
    for name in ("server.grpc", "server.ray"):
        logging.getLogger(name).addHandler(handler)
    try:
        with pytest.raises(WorkerFailedError) as e:
            gather(FakeWorkers(clock, 2, {(1, 0): "die", (0, 1): "die"}), np.arange(6),
                   DispatchPolicy(max_retries=1), grpc_log, key=3, need_all=False, clock=clock)
    finally:
        for name in ("server.grpc", "server.ray"):
            logging.getLogger(name).removeHandler(handler)
    msg = str(e.value)
    assert msg.startswith("round 4: gRPC client process (slot 0) died running clients 1, 3, 5")
    assert "ray" not in msg.lower() and "client processes" in msg
    assert records and all(n == "server.grpc" and m.startswith("grpc executor: ")
                           for n, m in records)
    with pytest.raises(WorkerFailedError, match=r"^round 4: Ray worker 0 died running clients"):
        run({(1, 0): "die", (0, 1): "die"}, DispatchPolicy(max_retries=1))


def test_a_call_made_late_by_its_transport_says_why():
    """A transport that moves a deadline to now (gRPC: the process missed 3 heartbeats) gives
    the reason; the fault log and the error said 'no answer within round_timeout_s=...' even
    when that timeout had not run out (or was not set)."""
    clock = FakeClock()

    class Silent(FakeWorkers):
        def ready(self, calls, timeout):
            for c in calls:
                if c.handle == "hang":
                    c.deadline, c.late = clock(), "client process silent for 3 s"
            return [c for c in calls if c.handle == "ok"]

    faults = FaultLog("grpc")
    got = gather(Silent(clock, 2, {(1, 0): "hang"}), np.arange(6), DispatchPolicy(), faults,
                 key=0, need_all=False, clock=clock)
    assert got.dropped == [1, 3, 5]
    timeouts = [e.detail for e in faults.events if e.kind == "timeouts"]
    assert timeouts == ["client process silent for 3 s"]
    with pytest.raises(WorkerFailedError, match="client process silent for 3 s") as e:
        gather(Silent(clock, 2, {(1, 0): "hang", (0, 1): "hang"}), np.arange(6),
               DispatchPolicy(max_retries=1), FaultLog("grpc"), key=0, need_all=True,
               clock=clock)
    assert "round_timeout_s=None" not in str(e.value)
