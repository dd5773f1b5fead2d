"""Schedules of the asynchronous family, without training (federated.md §5 oracles 12 and 14)."""
import math

import numpy as np
import pytest

from fedopt.algorithms.async_schedule import ClockStall, SchedulePolicy, Scheduler
from fedopt.algorithms.async_weights import expected_participation
from fedopt.clock import VirtualClock, validate_clock_config


def scheduler(n, policy, taus=None, **clock):
    if taus is not None:
        clock.setdefault("speed", {"name": "list", "values": list(taus)})
    return Scheduler(policy, VirtualClock(validate_clock_config(clock), n, seed=0), seed=0)


def run(s, steps):
    st, _ = s.init_state()
    return s.steps(st, steps), st


def test_async_aggregates_one_client_per_step_with_staleness_of_the_rates():
    taus = [1.0, 0.75, 0.5, 0.25]          # dyadic: exact event times
    s = scheduler(4, SchedulePolicy(4, buffer_size=1), taus)
    steps, _ = run(s, 4000)
    assert all(len(st.clients) == 1 for st in steps)
    times = [st.time for st in steps]
    assert times == sorted(times)
    ids = np.array([st.clients[0] for st in steps])
    stale = np.array([st.staleness[0] for st in steps])
    rate = 1 / np.array(taus)
    for i, tau in enumerate(taus):
        # arrival share (1/τ_i)/Σ_j 1/τ_j and mean staleness τ_i Σ_j 1/τ_j − 1
        assert np.mean(ids == i) == pytest.approx(rate[i] / rate.sum(), abs=2e-3)
        assert stale[ids == i][10:].mean() == pytest.approx(tau * rate.sum() - 1, abs=0.05)


def test_fedfix_client_participates_every_ceil_tau_over_dt_steps():
    taus, dt = [1.0, 0.75, 0.5, 0.25, 0.125], 0.25
    s = scheduler(5, SchedulePolicy(5, interval=dt), taus)
    steps, _ = run(s, 48)
    for k, st in enumerate(steps):
        assert st.time == (k + 1) * dt
    for i, tau in enumerate(taus):
        at = [st.index for st in steps if i in st.clients]
        period = math.ceil(tau / dt)
        assert at == list(range(period - 1, 48, period))
        # a client dispatched at version n+1-period is aggregated at step n: staleness period-1
        assert {int(st.staleness[list(st.clients).index(i)]) for st in steps if i in st.clients} \
            == {period - 1}


def test_empty_fedfix_window_still_advances_the_version():
    s = scheduler(2, SchedulePolicy(2, interval=0.25), [1.0, 1.0])
    steps, st = run(s, 8)
    assert [len(x.clients) for x in steps] == [0, 0, 0, 2, 0, 0, 0, 2]
    assert st["version"] == 8
    assert list(steps[3].staleness) == [3, 3] and list(steps[7].staleness) == [3, 3]


def test_unbiased_weights_average_to_p_and_identical_to_participation_share():
    taus = [1.0, 0.75, 0.5, 0.25]
    p = np.full(4, 0.25)
    s = scheduler(4, SchedulePolicy(4, buffer_size=1), taus)
    steps, _ = run(s, 8000)
    P = expected_participation("arrival", np.array(taus), 4, None)
    omega = np.zeros(4)
    for st in steps:
        omega[st.clients] += p[st.clients] / P[st.clients]     # d_i = p_i τ_i Σ_j 1/τ_j
    np.testing.assert_allclose(omega / len(steps), p, atol=2e-3)
    share = np.bincount([st.clients[0] for st in steps], minlength=4) / len(steps)
    np.testing.assert_allclose(share, P, atol=2e-3)


def test_fedbuff_takes_the_c_earliest_and_c_equal_n_has_no_staleness():
    s = scheduler(5, SchedulePolicy(5, buffer_size=5), None, compute={"name": "exponential"})
    steps, _ = run(s, 30)
    assert all(len(x.clients) == 5 and not x.staleness.any() for x in steps)
    s = scheduler(6, SchedulePolicy(6, buffer_size=2), None, compute={"name": "exponential"})
    st, _ = s.init_state()
    finish = st["job_finish"].numpy().copy()
    first = s.advance(st)
    assert sorted(first.clients) == sorted(np.argsort(finish, kind="stable")[:2])
    assert first.time == np.sort(finish)[1]


def test_sampling_matches_fedavg_and_synchronous_round_time_is_the_slowest():
    from fedopt.algorithms import FedAvg

    taus = np.linspace(0.5, 2.0, 10)
    s = scheduler(10, SchedulePolicy(4, buffer_size=4, cancel_stragglers=True), taus)
    steps, _ = run(s, 6)
    fedavg = FedAvg(np.ones(10, dtype=np.int64), 4, seed=0)
    t = 0.0
    for st in steps:
        np.testing.assert_array_equal(st.clients, fedavg.sample_clients(st.index))
        t += taus[st.clients].max()
        assert st.time == pytest.approx(t, rel=1e-12)


def test_deadline_and_drop_slowest_drop_and_count_stragglers():
    taus = [1.0, 2.0, 3.0, 10.0]
    s = scheduler(4, SchedulePolicy(4, buffer_size=4, deadline=5.0, cancel_stragglers=True), taus)
    steps, st = run(s, 3)
    for k, x in enumerate(steps):
        assert list(x.clients) == [0, 1, 2] and x.time == 5.0 * (k + 1)
        assert x.dropped == [(3, k)]
    assert st["dropped"] == 3
    s = scheduler(4, SchedulePolicy(4, buffer_size=2, cancel_stragglers=True), taus)
    steps, st = run(s, 3)
    assert all(list(x.clients) == [0, 1] for x in steps)
    assert [x.time for x in steps] == [2.0, 4.0, 6.0] and st["dropped"] == 6


def test_timeout_drops_a_client_that_never_returns_and_the_run_goes_on():
    taus = [1.0, math.inf, 0.5]
    s = scheduler(3, SchedulePolicy(3, buffer_size=3, cancel_stragglers=True), taus, timeout=4.0)
    steps, st = run(s, 3)
    assert [list(x.clients) for x in steps] == [[0, 2]] * 3
    assert [x.time for x in steps] == [4.0, 8.0, 12.0] and st["dropped"] == 3
    # asynchronous: the others keep arriving; the dead client is dropped every timeout
    s = scheduler(3, SchedulePolicy(3, buffer_size=1), taus, timeout=4.0)
    steps, st = run(s, 40)
    assert 1 not in {int(x.clients[0]) for x in steps}
    assert st["dropped"] == int(steps[-1].time // 4.0)


def test_never_hangs_without_timeout():
    taus = [1.0, math.inf, 0.5]
    # a buffer that can no longer fill is flushed; the straggler is dropped (counted)
    s = scheduler(3, SchedulePolicy(3, buffer_size=3, cancel_stragglers=True), taus)
    steps, st = run(s, 3)
    assert all(x.flushed and list(x.clients) == [0, 2] for x in steps) and st["dropped"] == 3
    # nothing can ever arrive: a clear error instead of an endless loop
    s = scheduler(2, SchedulePolicy(2, buffer_size=1), [math.inf, math.inf])
    st, _ = s.init_state()
    with pytest.raises(ClockStall, match="clock.timeout"):
        s.advance(st)


def test_on_arrival_dispatch_refills_at_the_current_version():
    # FedBuff (Nguyen et al.): 2 of 6 clients busy, buffer 2, a freed slot is refilled at once
    s = scheduler(6, SchedulePolicy(2, buffer_size=2, dispatch="on_arrival"), [1.0] * 6,
                  compute={"name": "exponential"})
    steps, st = run(s, 20)
    for x in steps:
        for clients, v in x.dispatched:
            assert v in (x.index, x.index + 1)
    assert int(st["busy"].sum()) == 2
    # a client never holds two jobs of one version
    seen = set()
    for x in steps:
        for c, v in zip(x.clients.tolist(), x.versions.tolist()):
            assert (c, v) not in seen
            seen.add((c, v))


def test_same_seed_same_schedule_and_budget_count():
    def make():
        return scheduler(8, SchedulePolicy(8, buffer_size=3), None,
                         compute={"name": "lognormal", "sigma": 1.0},
                         availability={"name": "onoff", "mean_online": 3.0, "mean_offline": 1.0})
    a, _ = run(make(), 50)
    b, _ = run(make(), 50)
    assert [(x.time, x.clients.tolist()) for x in a] == [(x.time, x.clients.tolist()) for x in b]
    s = make()
    st, _ = s.init_state()
    budget = a[29].time
    assert s.steps_within(st, budget) == sum(x.time <= budget for x in a)
    assert st["version"] == 0          # steps_within leaves the state alone


def test_copied_scheduler_state_is_independent_and_equal():
    """copy_state (used to peek ahead for time budgets) must equal a deep copy and share
    nothing mutable with the original: advancing the copy leaves the original untouched."""
    import copy

    import torch

    from fedopt.config import load_config
    from fedopt.simulation import Simulation

    cfg = {"seed": 2, "data": {"name": "synthetic", "num_clients": 30, "max_samples": 60},
           "model": {"name": "logreg"},
           "algorithm": {"name": "fedbuff", "rounds": 5, "clients_per_round": 12, "buffer_size": 3},
           "client": {"local_steps": 2, "batch_size": 8, "optimizer": {"name": "sgd", "lr": 0.05}},
           "clock": {"compute": {"name": "exponential", "shift": 0.5, "scale": 1.0}}}
    sim = Simulation(load_config(cfg))
    sim.step()
    sched = sim.algorithm.scheduler
    st = sim.state.extra["async"]["sched"]
    before = copy.deepcopy(st)

    def same(a, b):
        if isinstance(a, torch.Tensor):
            return torch.equal(a, b)
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, (list, tuple)):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return a == b

    dup = sched.copy_state(st)
    assert same(dup, before)
    for _ in range(4):
        sched.advance(dup)
    assert same(st, before) and not same(dup, before)
