"""Asynchronous algorithms in real time on Ray workers (server.realtime).

Oracle: with injected delays the driver delivers the workers' answers in the order of their
virtual completion times (waiting for an earlier-scheduled job when a later one answers first)
and handles timers no earlier than their virtual time, so the real-time run must give the
models (and the staleness, update and drop counts) of the virtual-clock run of the same
algorithm and clock on the in-process executor, step by step, at any ``seconds_per_unit`` —
checked with workers that answer in the worst order (no Ray) and on Ray at the README's
0.05 s per unit and with events closer together than the machine's jitter.
"""
import math

import numpy as np
import pytest
import torch

from fedopt.algorithms.base import ServerState
from fedopt.clock import VirtualClock, validate_clock_config
from fedopt.config import load_config
from fedopt.checkpoint import decode_checkpoint, encode_checkpoint
from fedopt.simulation import Simulation
from fedopt.server.ray_async import delay_from_clock
from fedopt.server.realtime import RealTimeAsync
from fedopt.server.realtime_clock import RealTimeClock
from tests.server.ray_fixtures import TEST_CPUS_PER_WORKER, ray_session  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

N = 4


def config(algorithm: dict, clock: dict | None = None, executor: str = "local") -> dict:
    cfg = {"seed": 3, "data": {"name": "synthetic", "num_clients": N, "min_samples": 8,
                               "max_samples": 40, "num_features": 10, "num_classes": 4},
           "model": {"name": "mlp", "hidden": [8]},
           "algorithm": {"rounds": 10, "clients_per_round": N, **algorithm},
           "client": {"local_steps": 3, "batch_size": 5,
                      "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.5}},
           "executor": {"name": executor, "dtype": "float64"}, "eval_train": False}
    if clock is not None:
        cfg["clock"] = clock
    if executor == "ray":
        cfg["executor"].update({"num_workers": 2, "num_threads": 1,
                                "num_cpus_per_worker": TEST_CPUS_PER_WORKER})
    return load_config(cfg)


def speeds(*values) -> dict:
    """Deterministic job times τ_i = values[i] (constant compute law 1 × speed factor)."""
    return {"speed": {"name": "list", "values": [None if math.isinf(v) else v for v in values]}}


@pytest.fixture(scope="module")
def ray_ex(ray_session):
    """One 2-worker Ray executor for every test (the algorithm lives on the coordinator)."""
    from fedopt.server.ray_executor import RayExecutor

    base = Simulation(config({"name": "async_fedavg"}))
    ex = RayExecutor.from_config(config({"name": "async_fedavg"}, executor="ray"), base.data,
                                 base.trainer)
    ids = np.arange(N)                      # warm up both workers' first calls
    ex.run_round(base.state.params, ids, np.ones(N), 0)
    ex.wait(ex.submit(base.state.params, ids, 0), num_returns=N)
    yield ex
    ex.close()


def virtual_run(algorithm: dict, clock: dict, steps: int):
    """(stats, params) per step of the virtual-clock run on the in-process executor."""
    sim = Simulation(config(algorithm, clock))
    out = []
    state = sim.state
    for _ in range(steps):
        state, stats = sim.algorithm.run_round(state, sim.executor, sim.client_optimizer)
        out.append((stats, {k: v.clone() for k, v in state.params.items()}))
    return out


def realtime_driver(algorithm: dict, clock: dict, seconds_per_unit: float | None):
    sim = Simulation(config(algorithm, clock))          # builds the same algorithm object
    driver = RealTimeAsync(sim.algorithm, seconds_per_unit)
    return driver, driver.init(sim.state.params), sim.client_optimizer


def realtime_run(ex, algorithm: dict, clock: dict, steps: int, seconds_per_unit: float):
    driver, state, opt = realtime_driver(algorithm, clock, seconds_per_unit)
    out = []
    try:
        for _ in range(steps):
            state, stats = driver.run_round(state, ex, opt)
            out.append((stats, state.params))
    finally:
        driver.close(ex)
    return out


def assert_same_run(virtual, real, seconds_per_unit, lag_s=1.0):
    assert len(virtual) == len(real)
    for n, ((vs, vp), (rs, rp)) in enumerate(zip(virtual, real)):
        for key in ("updates", "samples", "dropped", "staleness_mean", "staleness_max"):
            assert rs[key] == vs[key], (n, key)
        for k in vp:
            torch.testing.assert_close(rp[k], vp[k], rtol=0, atol=1e-12, msg=f"step {n} {k}")
        # real time: never before the virtual time (delays are held on the workers), and only
        # the coordinator's reaction lag after it
        t = vs["virtual_time"] * seconds_per_unit
        assert t - 0.02 <= rs["realtime_s"] <= t + lag_s, (n, rs["realtime_s"], t)


# -- without Ray ---------------------------------------------------------------------------------

def test_injected_delays_are_the_virtual_clock_times():
    cfg = validate_clock_config({"compute": {"name": "exponential", "shift": 0.5, "scale": 1.0},
                                 "speed": {"name": "list", "values": [1.0, 2.0, None]}})
    clock = VirtualClock(cfg, 3, seed=0)
    rt = RealTimeClock(clock, seconds_per_unit=0.01)
    ref = delay_from_clock(clock, seconds_per_unit=0.01)          # the work w_{i,j}, in seconds
    finish = rt.finish_times(np.array([0, 1, 2]), np.array([4, 4, 0]), 7.0, rt.init_state())
    # the scheduler queues each arrival at its virtual completion time, as on the virtual clock
    np.testing.assert_array_equal(finish, clock.finish_times(
        np.array([0, 1, 2]), np.array([4, 4, 0]), 7.0, clock.init_state()))
    assert math.isinf(finish[2]) and rt.simulated
    assert rt.take_delay(0) == pytest.approx(ref(0, 4), rel=1e-12)
    assert rt.take_delay(1) == pytest.approx(ref(1, 4), rel=1e-12)
    assert math.isinf(rt.take_delay(2))                           # never returns: not submitted
    off = RealTimeClock(clock, seconds_per_unit=None)              # real compute times only
    finish = off.finish_times(np.array([1]), np.array([0]), 0.0, off.init_state())
    assert math.isinf(finish[0]) and not off.simulated       # nothing queued: Ray reports
    assert off.take_delay(1) == 0.0 and off.unit_s == 1.0
    # with on/off availability a job also waits while its client is offline: delay ≥ work
    cfg = validate_clock_config({"availability": {"name": "onoff", "mean_online": 1.0,
                                                  "mean_offline": 3.0}})
    clock = VirtualClock(cfg, 8, seed=1)
    rt, st = RealTimeClock(clock, 1.0), clock.init_state()
    rt.finish_times(np.arange(8), np.zeros(8, dtype=np.int64), 0.5, st)
    delays = np.array([rt.take_delay(i) for i in range(8)])
    assert np.all(delays >= 1.0 - 1e-12) and np.any(delays > 1.0)


def test_only_asynchronous_algorithms_on_a_submit_wait_executor():
    fedavg = Simulation(config({"name": "fedavg"}))
    with pytest.raises(TypeError, match="asynchronous algorithms"):
        RealTimeAsync(fedavg.algorithm)
    with pytest.raises(ValueError, match="seconds_per_unit"):
        RealTimeAsync(Simulation(config({"name": "fedbuff", "buffer_size": 2})).algorithm, 0.0)
    sim = Simulation(config({"name": "fedbuff", "buffer_size": 2}))
    driver = RealTimeAsync(sim.algorithm, 0.1)
    state = driver.init(sim.state.params)
    with pytest.raises(TypeError, match=r"executor 'local' does not implement LiveExecutor "
                                        r"\(missing: submit, wait, cancel\)"):
        driver.run_round(state, sim.executor, sim.client_optimizer)
    from fedopt.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="executor.realtime"):
        load_config({**config({"name": "fedbuff", "buffer_size": 2}),
                     "executor": {"name": "local", "realtime": True}})


class InstantWorkers:
    """submit / wait / cancel over the in-process executor, ignoring the injected delays:
    every job's answer is in at once, and ``wait`` on several jobs gives the *last* submitted
    first — the worst case for a driver that counts answers in the order they come in (or,
    with ``newest_first=False``, the first submitted first)."""

    def __init__(self, local, newest_first=True):
        self.local, self.submitted, self.cancelled = local, [], []
        self.newest_first = newest_first

    def __getattr__(self, name):         # the rest of the executor contract: in-process
        return getattr(self.local, name)

    def submit(self, params, client_ids, key, *, optimizer=None, delay_s=None):
        from fedopt.engine.contract import ClientUpdate

        jobs = []
        for i in np.asarray(client_ids).tolist():
            out = self.local.run_round(params, np.array([i]), np.array([1.0]), key,
                                       optimizer=optimizer)
            upd = ClientUpdate(client_id=i, key=key, delta=out.delta_sum,
                               mean_loss=out.loss_sum / out.weight_sum, samples=out.samples,
                               slot=0, elapsed_s=0.0, compute_s=0.0, finished_at=0.0)
            job = type("Job", (), {"client_ids": np.array([i]), "update": upd})()
            self.submitted.append(i)
            jobs.append(job)
        return jobs

    def wait(self, jobs, num_returns=1, timeout=None):
        done = (list(reversed(jobs)) if self.newest_first else list(jobs))[:num_returns]
        return [j.update for j in done], [j for j in jobs if j not in done]

    def cancel(self, jobs):
        self.cancelled.extend(int(j.client_ids[0]) for j in jobs)


README_FEDBUFF_CLOCK = {"compute": {"name": "pareto", "scale": 0.5, "shape": 1.5},
                        "speed": {"name": "linear", "spread": 80}}


@pytest.mark.parametrize("algorithm,clock,steps", [
    # the README's FedBuff example clock (Pareto stragglers, 80 % speed spread)
    ({"name": "fedbuff", "buffer_size": 2}, README_FEDBUFF_CLOCK, 12),
    # issue 11.1's oracle schedule: FedBuff-1, on-arrival dispatch, τ = (1, 0.375) + two more
    ({"name": "fedbuff", "buffer_size": 1, "staleness": "constant"},
     speeds(1.0, 0.375, 0.5, 1.25), 12),
    ({"name": "async_fedavg"}, {"compute": {"name": "exponential", "shift": 0.1}}, 12),
    ({"name": "fedasync"}, README_FEDBUFF_CLOCK, 8),
    ({"name": "fedfix", "interval": 0.5}, speeds(0.5, 0.75, 1.0, 1.5), 6),   # ties with ticks
    ({"name": "fedavg_sync", "drop_slowest": 1}, README_FEDBUFF_CLOCK, 4),
    ({"name": "async_general", "buffer_size": 2, "deadline": 0.6, "dispatch": "on_arrival",
      "clients_per_round": 3}, {**README_FEDBUFF_CLOCK, "timeout": 2.0, "failure_prob": 0.2}, 8),
], ids=["fedbuff-readme", "fedbuff-1", "async_fedavg", "fedasync", "fedfix", "fedavg_sync",
        "general-timeout"])
def test_answers_are_delivered_in_virtual_completion_order(algorithm, clock, steps):
    """Injected delays: whatever order the workers answer in (here: all at once, the latest
    job first), the driver delivers them in virtual completion order, so the real-time run is
    the virtual-clock run step by step — schedule, staleness, drops, local loss and models —
    and no step happens before its virtual time."""
    spu = 0.002
    virtual = virtual_run(algorithm, clock, steps)
    driver, state, opt = realtime_driver(algorithm, clock, spu)
    workers = InstantWorkers(Simulation(config(algorithm, clock)).executor)
    real = []
    for _ in range(steps):
        state, stats = driver.run_round(state, workers, opt)
        real.append((stats, state.params))
    driver.close(workers)
    assert_same_run(virtual, real, spu)
    for (vs, _), (rs, _) in zip(virtual, real):
        assert rs["virtual_time"] == vs["virtual_time"]
        assert ("local_loss" in rs) == ("local_loss" in vs)
        if "local_loss" in vs:
            assert rs["local_loss"] == pytest.approx(vs["local_loss"], rel=1e-12)
    if algorithm["name"] == "async_general":     # deadlines with nothing back, drops
        assert any(s["updates"] == 0 for s, _ in virtual) and virtual[-1][0]["dropped"] > 0


@pytest.mark.parametrize("spu", [0.002, None], ids=["injected", "real-compute"])
def test_fedbuff_one_client_restarts_on_the_model_its_own_arrival_made(spu):
    """FedBuff-1, every client busy: a client aggregated at step n restarts right after it,
    so its next update has start version n + 1 — in both real-time modes (issue 11.1; the
    real-compute mode counts answers in the order they come in)."""
    algorithm, clock = {"name": "fedbuff", "buffer_size": 1}, speeds(1.0, 0.375, 0.5, 1.25)
    driver, state, opt = realtime_driver(algorithm, clock, spu)
    workers = InstantWorkers(Simulation(config(algorithm, clock)).executor, newest_first=False)
    steps, advance = [], driver.scheduler.advance
    driver.scheduler.advance = lambda *a, **k: steps.append(advance(*a, **k)) or steps[-1]
    for _ in range(12):
        state, _ = driver.run_round(state, workers, opt)
    driver.close(workers)
    last: dict[int, int] = {}
    for x in steps:
        (i,), (rho,) = x.clients.tolist(), x.versions.tolist()
        assert rho == last.get(i, -1) + 1, (x.index, i, rho)
        last[i] = x.index
    assert len(last) == N and max(x.staleness[0] for x in steps) > 0


def test_time_budget_stops_the_real_time_run_where_the_virtual_one_stops():
    """FedBuff-1, τ = (1, 0.375, 20, 20): steps at t = 0.375, 0.75, 1, 1.125, 1.5, 1.875, ...
    so a budget of 1.6 leaves 5 steps, on the virtual clock and in real time."""
    algorithm = {"name": "fedbuff", "buffer_size": 1, "time_budget": 1.6}
    clock = speeds(1.0, 0.375, 20.0, 20.0)
    virtual = Simulation(config(algorithm, clock))
    while not virtual.finished():
        virtual.step()
    driver, state, opt = realtime_driver(algorithm, clock, 0.002)
    workers = InstantWorkers(Simulation(config(algorithm, clock)).executor)
    times = []
    while not driver.finished(state):
        state, stats = driver.run_round(state, workers, opt)
        times.append(stats["virtual_time"])
    driver.close(workers)
    assert virtual.state.round == state.round == 5
    assert times == [0.375, 0.75, 1.0, 1.125, 1.5]


# -- real time on Ray equals the virtual clock ---------------------------------------------------

@pytest.mark.parametrize("algorithm,clock,steps,spu,max_staleness", [
    # per-arrival async FedAvg, unbiased weights d_i = p_i τ_i Σ_j 1/τ_j
    ({"name": "async_fedavg"}, speeds(1.5, 2.0, 2.5, 20.0), 7, 0.05, 3),
    # FedAsync: model mixing with α (s + 1)^(-1/2)
    ({"name": "fedasync"}, speeds(1.5, 2.0, 2.5, 20.0), 5, 0.05, 2),
    # FedBuff-2, dispatch on arrival, staleness φ(s) = 1/√(1+s), server momentum
    ({"name": "fedbuff", "buffer_size": 2,
      "server_optimizer": {"name": "sgd", "lr": 1.0, "momentum": 0.9}},
     speeds(0.6, 1.5, 1.8, 2.4), 4, 0.05, 2),
    # synchronous rounds that drop the slowest client (its Ray job is cancelled)
    ({"name": "fedavg_sync", "drop_slowest": 1}, speeds(1.0, 1.5, 2.0, 20.0), 2, 0.05, 0),
    # the README's FedBuff example: Pareto job times, 80 % speed spread, 0.05 s per unit
    ({"name": "fedbuff", "buffer_size": 2},
     {"compute": {"name": "pareto", "scale": 0.5, "shape": 1.5},
      "speed": {"name": "linear", "spread": 80}}, 10, 0.05, None),
    # issue 11.1's FedBuff-1 schedule (staleness 0, 0, 2, 1, 0, 0, 3) with events 1.9 ms apart
    ({"name": "fedbuff", "buffer_size": 1, "staleness": "constant"},
     speeds(1.0, 0.375, 20.0, 20.0), 7, 0.005, 3),
], ids=["async_fedavg", "fedasync", "fedbuff", "fedavg_sync", "fedbuff-readme", "fedbuff-1"])
def test_realtime_run_equals_the_virtual_clock_run(ray_ex, algorithm, clock, steps, spu,
                                                   max_staleness):
    virtual = virtual_run(algorithm, clock, steps)
    real = realtime_run(ray_ex, algorithm, clock, steps, spu)
    assert_same_run(virtual, real, spu)
    if max_staleness is not None:
        assert real[-1][0]["staleness_max"] == max_staleness
    if spu == 0.005:          # cumulative means of the hand-derived staleness 0,0,2,1,0,0,3
        means = np.cumsum([0, 0, 2, 1, 0, 0, 3]) / np.arange(1, 8)
        assert [s["staleness_mean"] for s, _ in real] == pytest.approx(means.tolist())


def test_fedfix_ticks_in_real_time_with_an_empty_window(ray_ex):
    algorithm, clock = {"name": "fedfix", "interval": 1.0}, speeds(1.4, 1.7, 2.4, 20.0)
    virtual = virtual_run(algorithm, clock, 3)
    real = realtime_run(ray_ex, algorithm, clock, 3, 0.2)
    assert [s["updates"] for s, _ in real] == [0, 2, 1]     # step 0: nobody back by Δt
    assert_same_run(virtual, real, 0.2, lag_s=0.15)         # ticks fire on time


def test_timeouts_drop_and_cancel_jobs_and_never_submit_failed_ones(ray_ex, monkeypatch):
    submitted, cancelled = [], []
    real_submit, real_cancel = ray_ex.submit, ray_ex.cancel
    monkeypatch.setattr(ray_ex, "submit", lambda p, ids, *a, **k: submitted.extend(
        np.asarray(ids).tolist()) or real_submit(p, ids, *a, **k))
    monkeypatch.setattr(ray_ex, "cancel", lambda jobs: cancelled.extend(
        int(j.client_ids[0]) for j in jobs) or real_cancel(jobs))
    # client 1 slower than the timeout, client 2 far slower, client 3 never returns
    algorithm = {"name": "async_fedavg", "aggregation_weights": "uniform"}
    clock = {**speeds(1.0, 2.0, 30.0, math.inf), "timeout": 1.5}
    virtual = virtual_run(algorithm, clock, 4)
    driver, state, opt = realtime_driver(algorithm, clock, 0.1)
    real = []
    try:
        for _ in range(4):
            state, stats = driver.run_round(state, ray_ex, opt)
            real.append((stats, state.params))
        assert sorted(cancelled) == [1, 1, 2, 2]             # the two timeouts of 1 and 2
    finally:
        driver.close(ray_ex)
    assert_same_run(virtual, real, 0.1)
    assert [s["dropped"] for s, _ in real] == [0, 3, 3, 6]
    assert 3 not in submitted and submitted.count(0) == 5   # jobs at t = 0, 1, 2, 3, 4
    assert submitted.count(1) == submitted.count(2) == 3     # at t = 0, 2, 4


def test_resume_restarts_in_flight_jobs_from_the_restored_model(ray_ex):
    algorithm = {"name": "async_fedavg", "aggregation_weights": "uniform"}
    clock, spu = speeds(1.5, 2.0, 2.5, 20.0), 0.2
    driver, state, opt = realtime_driver(algorithm, clock, spu)
    for _ in range(3):
        state, before = driver.run_round(state, ray_ex, opt)
    saved = encode_checkpoint(state.state_dict())            # a checkpoint, then the process dies
    driver.close(ray_ex)
    restored = ServerState.from_state_dict(decode_checkpoint(saved))   # the run's format
    theta3 = {k: v.clone() for k, v in restored.params.items()}

    resumed, fresh, _ = realtime_driver(algorithm, clock, spu)   # a new process
    try:
        s1, a = resumed.run_round(restored, ray_ex, opt)
        s2, b = resumed.run_round(s1, ray_ex, opt)
    finally:
        resumed.close(ray_ex)
    assert (s1.round, s2.round) == (4, 5)
    assert a["restarted"] == N and a["in_flight"] == N         # every job restarted from θ^3
    # oracle: each restarted client trained on θ^3 with the minibatches of start version 3
    local = Simulation(config(algorithm, clock)).executor

    def delta(i):
        return local.run_round(theta3, np.array([i]), np.array([1.0]), 3).delta_sum

    d0, d1 = delta(0), delta(1)
    for k in theta3:    # θ^4 = θ^3 + Δ_0(θ^3) (staleness 0), θ^5 = θ^4 + Δ_1(θ^3) (staleness 1)
        torch.testing.assert_close(s1.params[k], theta3[k] + d0[k], rtol=0, atol=1e-12)
        torch.testing.assert_close(s2.params[k], theta3[k] + d0[k] + d1[k], rtol=0, atol=1e-12)
    # staleness over all aggregated updates: 0, 1, 2 before the checkpoint, then 0 and 1
    assert (before["staleness_mean"], a["staleness_mean"], b["staleness_mean"]) == (1.0, 0.75, 0.8)
    # real time continues from the checkpoint: restart at ≈ t3, first arrival 1.5 units later
    assert a["realtime_s"] >= before["realtime_s"] + 1.5 * spu - 0.02
    assert b["realtime_s"] >= before["realtime_s"] + 2.0 * spu - 0.02


@pytest.mark.slow
def test_run_realtime_records_and_resumes_a_run(ray_session, tmp_path):
    import fedopt
    from fedopt.records import read_metrics

    cfg = config({"name": "fedbuff", "buffer_size": 2, "rounds": 3},
                 speeds(0.6, 1.5, 1.8, 2.4), executor="ray")
    cfg["executor"].update({"realtime": True, "seconds_per_unit": 0.2})
    first = fedopt.run(cfg, tmp_path / "run", progress=False)
    assert [r["round"] for r in first.metrics] == [1, 2, 3]
    assert first.metrics[-1]["restarted"] == 0 and first.summary["client_updates"] == 6
    cfg["algorithm"]["rounds"] = 5
    again = fedopt.run(cfg, tmp_path / "run", progress=False, resume=True)
    rows = read_metrics(tmp_path / "run")
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5] == [r["round"] for r in again.metrics]
    assert rows[-1]["restarted"] == N and again.summary["client_updates"] == 10
    times = [r["realtime_s"] for r in rows]
    assert times == sorted(times) and times[0] > 0
    assert all(r["staleness_max"] >= 0 and math.isfinite(r["test_loss"]) for r in rows)
