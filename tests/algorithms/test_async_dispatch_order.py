"""A freed client is dispatched with the newest model of the instant it is freed (issue 11.1).

FedBuff's on-arrival dispatch refills a slot at every arrival; when that arrival itself sets off
an aggregation (a full buffer, or a tick / deadline at the same virtual time) the client must
be re-dispatched *after* it, with θ^{n+1}. So FedBuff with ``buffer_size: 1`` and constant
staleness is asynchronous FedAvg with identical weights, step by step.
"""
import numpy as np
import pytest
import torch

from fedopt.algorithms.async_schedule import SchedulePolicy, Scheduler
from fedopt.clock import VirtualClock, validate_clock_config
from fedopt.config import load_config
from fedopt.simulation import Simulation


class Recording(Scheduler):
    """Logs every dispatch as (virtual time, version, made inside fire())."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.log, self._firing = [], False

    def fire(self, *a, **k):
        self._firing = True
        try:
            return super().fire(*a, **k)
        finally:
            self._firing = False

    def dispatch(self, st, queue, dispatched):
        before = len(dispatched)
        super().dispatch(st, queue, dispatched)
        if len(dispatched) > before:
            self.log.append((st["now"], st["version"], self._firing))


def scheduler(taus, policy, cls=Scheduler):
    clock = {"speed": {"name": "list", "values": list(taus)}}     # job time τ_i exactly
    return cls(policy, VirtualClock(validate_clock_config(clock), len(taus), seed=0), seed=0)


def staleness_run(policy, taus, steps):
    s = scheduler(taus, policy)
    st, _ = s.init_state()
    out = s.steps(st, steps)
    return [x.staleness.tolist() for x in out], [(x.time, x.clients.tolist(),
                                                  x.versions.tolist()) for x in out]


def test_fedbuff_one_buffer_has_the_staleness_of_async_fedavg():
    """Two clients, τ = (1, 0.375) (dyadic: exact times), both always busy, one step per
    arrival; each freed client restarts on the model its own arrival made:

    t      event (start version ρ)       step n   s = n − ρ   re-dispatched at version
    0.375  client 1 (ρ=0)                0        0           1 (back at 0.75)
    0.75   client 1 (ρ=1)                1        0           2 (back at 1.125)
    1      client 0 (ρ=0)                2        2           3 (back at 2)
    1.125  client 1 (ρ=2)                3        1           4 (back at 1.5)
    1.5    client 1 (ρ=4)                4        0           5 (back at 1.875)
    1.875  client 1 (ρ=5)                5        0           6 (back at 2.25)
    2      client 0 (ρ=3)                6        3

    (Re-dispatching client 0 at t = 1 before step 2, with θ^2, gives 0, 0, 2, 1, 1, 1, 4.)"""
    taus = [1.0, 0.375]
    fedbuff, fb = staleness_run(SchedulePolicy(2, buffer_size=1, dispatch="on_arrival"), taus, 7)
    asyncavg, aa = staleness_run(SchedulePolicy(2, buffer_size=1), taus, 7)
    assert [s[0] for s in fedbuff] == [0, 0, 2, 1, 0, 0, 3]
    assert fb == aa and fedbuff == asyncavg
    assert [t for t, _, _ in fb] == [0.375, 0.75, 1.0, 1.125, 1.5, 1.875, 2.0]


def test_fedfix_on_arrival_client_back_at_a_tick_restarts_after_it():
    """Δt = 1, τ = (2, 0.5), on-arrival dispatch. Client 0 (ρ=0) is back at t = 2, exactly at
    the tick that makes version 2: it must restart on θ^2 (not θ^1), so its next update, back
    at t = 4, is aggregated by the tick of step 3 with staleness 3 − 2 = 1 (not 2):

    tick t=1, step 0: client 1 (ρ0, s0)             → 1 restarts at v1, back at 1.5
    tick t=2, step 1: client 0 (ρ0, s1), 1 (ρ1, s0) → both restart at v2 (0 back at 4, 1 at 2.5)
    tick t=3, step 2: client 1 (ρ2, s0)             → 1 restarts at v3, back at 3.5
    tick t=4, step 3: client 0 (ρ2, s1), 1 (ρ3, s0)"""
    pol = SchedulePolicy(2, interval=1.0, dispatch="on_arrival")
    stale, _ = staleness_run(pol, [2.0, 0.5], 4)
    assert stale == [[0], [1, 0], [0], [1, 0]]


def test_fedbuff_deadline_at_an_arrival_aggregates_before_the_refill():
    """FedBuff-3 with a deadline 1 after each aggregation, τ = (0.5, 2, 10), all busy:

    t=1 deadline, step 0: client 0 (ρ0, s0)               → 0 restarts at v1, back at 1.5
    t=2 client 1 (ρ0) is back exactly at the deadline, step 1: clients 0 (ρ1, s0), 1 (ρ0, s1)
        → both restart on θ^2 (client 1 back at 4, client 0 at 2.5)
    t=3 deadline, step 2: client 0 (ρ2, s0)               → 0 restarts at v3, back at 3.5
    t=4 deadline, step 3: clients 0 (ρ3, s0), 1 (ρ2, s1)

    (Restarting client 1 at t = 2 before the deadline's step, on θ^1, makes its last
    staleness 2.) Client 2 is back only at t = 10."""
    pol = SchedulePolicy(3, buffer_size=3, deadline=1.0, dispatch="on_arrival")
    stale, steps = staleness_run(pol, [0.5, 2.0, 10.0], 4)
    assert stale == [[0], [0, 1], [0], [0, 1]]
    assert [t for t, _, _ in steps] == [1.0, 2.0, 3.0, 4.0]


def test_fedbuff_arrivals_at_one_instant_restart_after_the_buffer_fills():
    """FedBuff-2, τ = (0.5, 1.5), deadline 1: client 0 (ρ0) is aggregated alone by the deadline
    at t = 1 (step 0) and restarts on θ^1, back at 1.5 together with client 1 (ρ0). Their two
    arrivals fill the buffer (step 1 at t = 1.5: staleness 0 and 1) and both restart on θ^2:

    t=2    client 0 (ρ2) back, buffer 1 of 2
    t=2.5  deadline (1.5 + 1), step 2: client 0 (ρ2, s0) → restarts at v3, back at 3
    t=3    clients 0 (ρ3) and 1 (ρ2, back at 1.5 + 1.5) fill the buffer: step 3, s = 0 and 1

    (Restarting client 1 at t = 1.5 on θ^1, before the step its own arrival completes, makes
    its last staleness 2.)"""
    pol = SchedulePolicy(2, buffer_size=2, deadline=1.0, dispatch="on_arrival")
    stale, steps = staleness_run(pol, [0.5, 1.5], 4)
    assert stale == [[0], [0, 1], [0], [0, 1]]
    assert [t for t, _, _ in steps] == [1.0, 1.5, 2.5, 3.0]


@pytest.mark.parametrize("policy", [
    SchedulePolicy(3, buffer_size=1, dispatch="on_arrival"),
    SchedulePolicy(3, buffer_size=2, dispatch="on_arrival"),
    SchedulePolicy(3, buffer_size=3, dispatch="on_arrival"),
    SchedulePolicy(3, buffer_size=2, deadline=0.5, dispatch="on_arrival"),
    SchedulePolicy(3, interval=0.25, dispatch="on_arrival"),
    SchedulePolicy(3, interval=0.5, dispatch="on_arrival"),
    SchedulePolicy(3, buffer_size=1),
    SchedulePolicy(3, buffer_size=2, deadline=0.5),
    SchedulePolicy(3, interval=0.25),
    SchedulePolicy(3, buffer_size=3, cancel_stragglers=True),
], ids=lambda p: f"c{p.buffer_size}-dt{p.interval}-dl{p.deadline}-{p.dispatch}")
def test_no_aggregation_at_the_instant_after_a_refill_with_the_older_model(policy):
    """Every trigger and dispatch rule, with many simultaneous events (dyadic job times): a
    dispatch made before the trigger fires, at version v and time t, is never followed by
    step v at the same time t (it would then have trained on θ^v while θ^{v+1} existed at its
    start)."""
    s = scheduler([0.5, 0.75, 1.0, 1.25, 2.0], policy, Recording)
    st, _ = s.init_state()
    steps = s.steps(st, 60)
    early = [(t, v) for t, v, firing in s.log if not firing and v < len(steps)]
    assert early or policy.dispatch == "on_aggregation"
    for t, v in early:
        assert steps[v].time > t, (t, v, steps[v].time)


def sim(algorithm):
    cfg = {"seed": 5, "data": {"name": "synthetic", "num_clients": 2, "min_samples": 8,
                               "max_samples": 30, "num_features": 6, "num_classes": 3},
           "model": {"name": "logreg"},
           "algorithm": {"rounds": 7, "clients_per_round": 2, **algorithm},
           "client": {"local_steps": 2, "batch_size": 4,
                      "optimizer": {"name": "sgd", "lr": 0.1}},
           "clock": {"speed": {"name": "list", "values": [1.0, 0.375]}},
           "executor": {"dtype": "float64"}, "eval_train": False}
    return Simulation(load_config(cfg))


def test_fedbuff_one_buffer_equals_async_fedavg_model_by_model():
    """Same schedule and weights (identical, φ ≡ 1), hence the same models bit for bit."""
    fedbuff = sim({"name": "fedbuff", "buffer_size": 1, "staleness": "constant"})
    asyncavg = sim({"name": "async_fedavg", "aggregation_weights": "uniform"})
    for _ in range(7):
        fb, aa = fedbuff.step(), asyncavg.step()
        for k, v in asyncavg.state.params.items():
            assert torch.equal(fedbuff.state.params[k], v), k
    # staleness 0, 0, 2, 1, 0, 0, 3 (see the schedule test above): mean 6/7, max 3
    assert fb["staleness_mean"] == aa["staleness_mean"] == pytest.approx(6 / 7)
    assert fb["staleness_max"] == aa["staleness_max"] == 3
