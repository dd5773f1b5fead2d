"""Faults on real actors: a worker killed mid-round, a hung worker past the timeout, a run that
loses a worker between rounds. Each round's result must equal the fault-free (in-process) one,
or, for a dropped straggler, FedAvg over the clients that returned; no update counted twice."""
import threading

import numpy as np
import pytest

from fedopt.config import load_config
from fedopt.simulation import Simulation
from tests.server.ray_fixtures import (assert_output_close, assert_params_close,  # noqa: F401
                                       make_config, ray_session)

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture(scope="module")
def local_sim():
    return Simulation(load_config(make_config("local")))


@pytest.fixture(scope="module")
def ex(ray_session, local_sim):
    from fedopt.server.ray_executor import RayExecutor

    cfg = load_config(make_config("ray", num_workers=2))
    executor = RayExecutor.from_config(cfg, local_sim.data, local_sim.trainer)
    yield executor
    executor.close()


@pytest.fixture
def fresh(ex):
    """The shared executor with all workers up, fault-free settings, counters as a baseline."""
    assert ex.wait_ready(timeout=60)
    ex.round_timeout_s, ex.on_timeout, ex.delay_s = None, "drop", None
    yield ex, dict(ex.faults())
    ex.round_timeout_s, ex.on_timeout, ex.delay_s = None, "drop", None


def _new_faults(ex, before):
    return {k: v - before[k] for k, v in ex.faults().items()}


def _inputs(sim, r):
    ids = sim.algorithm.sample_clients(r)
    return ids, sim.algorithm.weights(ids)


def test_worker_killed_mid_round_is_replaced_and_the_round_is_exact(ray_session, fresh, local_sim):
    ex, before = fresh
    ids, w = _inputs(local_sim, 1)
    victim_client = int(next(i for i in ids if i % 2 == 1))        # a client of worker 1
    ex.delay_s = lambda c, r: 1.0 if c == victim_client else 0.0   # keeps worker 1 busy
    victim = ex.pool.actor(1)
    old_pid = ex.workers[1]["pid"]
    timer = threading.Timer(0.3, lambda: ray_session.kill(victim))
    timer.start()
    out = ex.run_round(local_sim.state.params, ids, w, 1, keep_local=True)
    timer.join()
    ref = local_sim.executor.run_round(local_sim.state.params, ids, w, 1, keep_local=True)
    assert_output_close(ref, out, keep_local=True)                 # every client exactly once
    new = _new_faults(ex, before)
    assert new["worker_deaths"] == 1 and new["restarts"] == 1 and new["retried_shards"] == 1
    assert new["dropped_clients"] == 0 and ex.last_report.retried == 1
    assert ex.last_report.slots == [0, 0]                           # its shard ran on worker 0
    # the replacement comes up and takes its shard back
    assert ex.wait_ready(timeout=60) and ex.workers[1]["pid"] != old_pid
    ex.delay_s = None
    ids, w = _inputs(local_sim, 2)
    assert_output_close(local_sim.executor.run_round(local_sim.state.params, ids, w, 2),
                        ex.run_round(local_sim.state.params, ids, w, 2))
    assert sorted(ex.last_report.slots) == [0, 1]


def test_hung_worker_is_dropped_and_the_round_is_fedavg_over_the_rest(fresh, local_sim):
    ex, before = fresh
    ids, w = _inputs(local_sim, 3)
    hung = ids[ids % 2 == 0]                                       # worker 0's clients
    ex.round_timeout_s = 5.0          # healthy shards answer in well under a second
    ex.delay_s = lambda c, r: 120.0 if c == int(hung[0]) else 0.0
    out = ex.run_round(local_sim.state.params, ids, w, 3)
    keep = ids % 2 == 1
    scale = w.sum() / w[keep].sum()
    ref = local_sim.executor.run_round(local_sim.state.params, ids[keep], w[keep] * scale, 3)
    assert_output_close(ref, out, same_clients=False)       # the hung worker's clients are out
    assert sorted(ex.last_report.dropped) == sorted(hung.tolist())
    new = _new_faults(ex, before)
    assert new["timeouts"] == 1 and new["dropped_clients"] == len(hung) and new["restarts"] == 1
    assert new["worker_deaths"] == 0


def test_retry_policy_reruns_a_straggler_and_the_round_is_exact(fresh, local_sim):
    ex, before = fresh
    ids, w = _inputs(local_sim, 4)
    first = int(ids[0])
    delayed = set()

    def delay(c, r):                      # straggles on its first attempt only
        if c == first and c not in delayed:
            delayed.add(c)
            return 120.0
        return 0.0

    ex.round_timeout_s, ex.on_timeout, ex.delay_s = 5.0, "retry", delay
    out = ex.run_round(local_sim.state.params, ids, w, 4)
    assert_output_close(local_sim.executor.run_round(local_sim.state.params, ids, w, 4), out)
    new = _new_faults(ex, before)
    assert new["timeouts"] == 1 and new["retried_shards"] == 1 and new["dropped_clients"] == 0


def test_async_job_on_a_killed_worker_is_resubmitted_once(ray_session, fresh, local_sim):
    ex, before = fresh
    params = local_sim.state.params
    jobs = ex.submit(params, [0, 1, 2, 3], key=9, delay_s=lambda c, r: 1.0 if c == 1 else 0.0)
    victim = jobs[1].actor
    timer = threading.Timer(0.3, lambda: ray_session.kill(victim))
    timer.start()
    updates, pending = ex.wait(jobs, num_returns=4)
    timer.join()
    assert pending == [] and sorted(u.client_id for u in updates) == [0, 1, 2, 3]
    ref = local_sim.executor.run_round(params, np.array([1]), np.array([1.0]), 9)
    assert_params_close(ref.delta_sum, next(u.delta for u in updates if u.client_id == 1))
    new = _new_faults(ex, before)
    assert new["worker_deaths"] >= 1 and new["retried_shards"] >= 1


def test_run_loses_a_worker_between_rounds_and_finishes_identically(ray_session):
    local = Simulation(load_config(make_config("local")))
    local.run()
    sim = Simulation(load_config(make_config("ray", num_workers=2)))
    try:
        killed = []

        def on_round(r, row):
            if r == 2:
                killed.append(sim.executor.workers[0]["pid"])
                ray_session.kill(sim.executor.pool.actor(0))

        metrics = sim.run(on_round=on_round)
        assert killed and len(metrics) == 4 and sim.state.round == 4
        assert sim.executor.faults()["worker_deaths"] == 1
        assert sim.client_updates == local.client_updates          # nothing counted twice
        assert_params_close(local.state.params, sim.state.params)
    finally:
        sim.executor.close()


def test_worker_dying_past_max_retries_is_one_readable_error(ray_session, fresh, local_sim,
                                                             monkeypatch, capsys, tmp_path):
    """``max_retries: 0`` and a worker killed mid-call: the synchronous round and a real-time
    job each raise :class:`WorkerFailedError` naming the setting, the worker, the clients and
    the cause; the CLI prints it as one ``error:`` line (exit 2, no traceback)."""
    from fedopt.server.faults import WorkerFailedError
    from fedopt.simulations import cli

    ex, _ = fresh
    ids, w = _inputs(local_sim, 5)
    victim_client = int(next(i for i in ids if i % 2 == 1))        # a client of worker 1
    monkeypatch.setattr(ex, "max_retries", 0)
    errors = []
    try:
        ex.delay_s = lambda c, r: 1.0 if c == victim_client else 0.0
        victim = ex.pool.actor(1)
        timer = threading.Timer(0.3, lambda: ray_session.kill(victim))
        timer.start()
        with pytest.raises(WorkerFailedError) as sync:
            ex.run_round(local_sim.state.params, ids, w, 5)
        timer.join()
        errors.append(sync.value)
        assert ex.wait_ready(timeout=60)
        ex.delay_s = None
        jobs = ex.submit(local_sim.state.params, [0, 1], key=6,
                         delay_s=lambda c, r: 1.0 if c == 1 else 0.0)
        timer = threading.Timer(0.3, lambda: ray_session.kill(jobs[1].actor))
        timer.start()
        with pytest.raises(WorkerFailedError) as job:
            ex.wait(jobs, num_returns=2)
        timer.join()
        errors.append(job.value)
    finally:
        assert ex.wait_ready(timeout=60)
    shard = sorted(int(c) for c in ids if c % 2 == 1)
    for e, clients, round_no in [(errors[0], shard, 6), (errors[1], [1], 7)]:
        assert isinstance(e, RuntimeError) and e.clients == clients and e.max_retries == 0
        msg = str(e)
        assert msg.startswith(f"round {round_no}: Ray worker ") and " died running client" in msg
        assert "executor.max_retries=0" in msg and ", ".join(map(str, clients)) in msg
        assert "Error" in e.cause and f"; cause: {e.cause})" in msg and "\n" not in msg

    def failing(*a, **k):
        raise errors[0]

    monkeypatch.setattr(cli, "load_config", lambda source, overrides=(): {})
    monkeypatch.setattr(cli, "run_experiment", failing)
    code = cli.main(["run", "cfg.yaml", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE and err == f"error: {errors[0]}\n"


def test_a_pool_with_no_live_worker_is_one_readable_error(monkeypatch, capsys, tmp_path):
    """Every worker dead and none restartable: :class:`RayPoolError` (not a bare RuntimeError),
    printed by the CLI as one ``error:`` line (exit 2)."""
    from fedopt.server.faults import RayPoolError
    from fedopt.server.ray_pool import WorkerPool
    from fedopt.simulations import cli

    pool = object.__new__(WorkerPool)              # the assignment logic alone, no Ray
    pool.poll, pool.live = (lambda: None), (lambda: [])
    pool.wait_ready_any, pool.start_timeout_s = (lambda timeout: None), 0.0
    with pytest.raises(RayPoolError, match="no Ray worker is alive") as e:
        pool.assign(np.arange(4))

    def fail(*args, **kwargs):
        raise e.value

    monkeypatch.setattr(cli, "run_experiment", fail)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("data: {name: synthetic, num_clients: 4}\n"
                   "algorithm: {name: fedavg, rounds: 1, clients_per_round: 2}\n"
                   "client: {local_steps: 1}\n")
    assert cli.main(["run", str(cfg), "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {e.value}\n"
