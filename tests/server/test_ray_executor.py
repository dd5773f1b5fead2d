"""The Ray executor gives the in-process executor's results: per round, per run, resumed, async."""
import time

import numpy as np
import pytest
import torch

import fedopt
from fedopt.config import load_config
from fedopt.data import build_dataset
from fedopt.simulation import Simulation
from tests.server.ray_fixtures import (assert_metrics_close, assert_output_close,  # noqa: F401
                                       assert_params_close, make_config, ray_session)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def local_sim():
    return Simulation(load_config(make_config("local")))


@pytest.fixture(scope="module")
def ray3(ray_session, local_sim):
    """A 3-worker executor next to the in-process simulation it must agree with."""
    from fedopt.server.ray_executor import RayExecutor

    cfg = load_config(make_config("ray", num_workers=3))
    ex = RayExecutor.from_config(cfg, local_sim.data, local_sim.trainer)
    yield ex
    ex.close()


def _round_inputs(sim, round_idx):
    ids = sim.algorithm.sample_clients(round_idx)
    return ids, sim.algorithm.weights(ids)


def test_round_output_equals_in_process_with_one_put_per_round(ray_session, ray3, local_sim,
                                                               monkeypatch):
    assert [w["held_clients"] for w in ray3.workers] == [8, 8, 8]
    assert all(w["state"] == "ready" and w["device"] == "cpu" for w in ray3.workers)
    ids, weights = _round_inputs(local_sim, 2)
    params = {k: v + 0.05 for k, v in local_sim.state.params.items()}
    corr = {k: 0.02 * torch.randn((len(ids),) + v.shape, dtype=v.dtype,
                                  generator=torch.Generator().manual_seed(0))
            for k, v in params.items()}
    opt = local_sim.client_optimizer.replace(lr=0.02)
    ref = local_sim.executor.run_round(params, ids, weights, 2, optimizer=opt, keep_local=True,
                                       correction=corr)
    import fedopt.protocols.ray_messages as ray_messages

    puts = []
    real_put = ray_session.put
    monkeypatch.setattr(ray_session, "put", lambda v, **kw: puts.append(v) or real_put(v, **kw))
    # a small model travels inside the three workers' tasks: no object-store put at all
    small = ray3.run_round(params, ids, weights, 2, optimizer=opt, keep_local=True,
                           correction=corr)
    assert len(puts) == 0
    # above INLINE_BYTES (every model here, with a limit of 0): one put per round
    monkeypatch.setattr(ray_messages, "INLINE_BYTES", 0)
    got = ray3.run_round(params, ids, weights, 2, optimizer=opt, keep_local=True, correction=corr)
    assert len(puts) == 1                       # the global model, once, not once per client
    assert_output_close(ref, got, keep_local=True)
    for k in got.delta_sum:                     # how the model travels changes no bit
        assert torch.equal(small.delta_sum[k], got.delta_sum[k])
        assert torch.equal(small.local_params[k], got.local_params[k])
    assert sorted(ray3.last_report.slots) == sorted(set(int(i) % 3 for i in ids))
    assert ray3.faults() == {k: 0 for k in ray3.faults()}
    # plain FedAvg call (no correction, default optimizer) over another round's sample
    ids, weights = _round_inputs(local_sim, 5)
    assert_output_close(local_sim.executor.run_round(params, ids, weights, 5),
                        ray3.run_round(params, ids, weights, 5))


def test_async_jobs_arrive_as_they_finish_with_injected_delays(ray3, local_sim):
    ids = np.array([3, 4, 5, 10])
    slow = 4                                     # held by worker 1, like 10
    params = local_sim.state.params
    jobs = ray3.submit(params, ids, key=6,
                       delay_s=lambda c, r: 1.0 if c == slow else 0.0)
    assert len(jobs) == 4
    arrived = []
    pending = jobs
    while pending:
        ups, pending = ray3.wait(pending, num_returns=1)
        arrived.extend(ups)
    assert [u.client_id for u in arrived][-1] == slow
    assert sorted(u.client_id for u in arrived) == sorted(ids.tolist())
    by_id = {u.client_id: u for u in arrived}
    assert by_id[slow].elapsed_s >= 1.0
    for c in ids:                                # Δ_i == the in-process single-client update
        ref = local_sim.executor.run_round(params, np.array([c]), np.array([1.0]), 6)
        assert_params_close(ref.delta_sum, by_id[int(c)].delta)
        assert by_id[int(c)].mean_loss == pytest.approx(ref.loss_sum, rel=1e-9)
        assert by_id[int(c)].key == 6
    # grouped: one vectorized job per worker, same per-client updates
    grouped = ray3.submit(params, ids, key=6, group=True)
    assert len(grouped) == len({int(c) % 3 for c in ids})
    ups, rest = ray3.wait(grouped, num_returns=len(grouped))
    assert rest == [] and sorted(u.client_id for u in ups) == sorted(ids.tolist())
    for u in ups:
        assert_params_close(by_id[u.client_id].delta, u.delta)


def test_async_small_model_travels_inside_the_jobs_and_changes_no_bit(ray_session, ray3,
                                                                      local_sim, monkeypatch):
    """submit: a model up to INLINE_BYTES goes inside each job's task (no put), a larger one
    into the object store once for all jobs; the updates are the in-process ones either way
    and bit-identical between the two."""
    import fedopt.protocols.ray_messages as ray_messages

    ids = np.array([3, 4, 5, 10])
    params = {k: v + 0.03 for k, v in local_sim.state.params.items()}
    puts = []
    real_put = ray_session.put
    monkeypatch.setattr(ray_session, "put", lambda v, **kw: puts.append(v) or real_put(v, **kw))
    got = {}
    for limit, want_puts in ((ray_messages.INLINE_BYTES, 0), (0, 1)):
        monkeypatch.setattr(ray_messages, "INLINE_BYTES", limit)
        puts.clear()
        ups, rest = ray3.wait(ray3.submit(params, ids, key=3), num_returns=len(ids))
        assert rest == [] and len(puts) == want_puts
        got[limit] = {u.client_id: u.delta for u in ups}
    small, large = got.values()
    for c in ids:
        ref = local_sim.executor.run_round(params, np.array([c]), np.array([1.0]), 3)
        assert_params_close(ref.delta_sum, small[int(c)])
        for k in small[int(c)]:
            assert torch.equal(small[int(c)][k], large[int(c)][k])


def test_each_worker_holds_only_its_shard(ray_session, ray3, local_sim):
    """Worker j of 3 holds the train rows of clients i ≡ j (mod 3), no test rows, and no
    tensor of the process adds up to the whole train set (sizes from the coordinator's data)."""
    data = local_sim.data
    counts = data.counts.numpy()
    full_bytes = data.x.numel() * data.x.element_size() + data.y.numel() * data.y.element_size()
    for slot in ray3.pool.slots:
        mem = ray_session.get(slot.actor.memory.remote())
        rows = int(counts[slot.index::3].sum())
        assert (mem["rows"], mem["test_rows"]) == (rows, 0)
        assert mem["data_bytes"] < mem["tensor_bytes"] < full_bytes
        assert mem["uss"] is not None and mem["uss"] <= mem["rss"]


def test_wait_times_out_with_jobs_still_pending(ray3, local_sim):
    jobs = ray3.submit(local_sim.state.params, [1], key=0, delay_s=lambda c, r: 4.0)
    t = time.perf_counter()
    ups, pending = ray3.wait(jobs, timeout=0.2)
    assert ups == [] and pending == jobs and time.perf_counter() - t < 3.0  # before the job ends
    ups, pending = ray3.wait(pending)
    assert [u.client_id for u in ups] == [1] and pending == []


def test_full_gradients_on_workers_equal_in_process(ray3, local_sim):
    ids = np.array([0, 5, 7, 22])
    ref = local_sim.executor.full_gradients(local_sim.state.params, ids)
    got = ray3.full_gradients(local_sim.state.params, ids)
    assert_params_close(ref, got, atol=1e-12)


def test_fedavg_run_trajectory_equals_local(ray_session, monkeypatch):
    from fedopt.server.ray_executor import RayExecutor

    rounds = []
    real = RayExecutor.run_jobs
    monkeypatch.setattr(RayExecutor, "run_jobs",
                        lambda self, *a, **k: rounds.append(int(a[2][0])) or real(self, *a, **k))
    local = fedopt.run(make_config("local"), progress=False)
    ray_run = fedopt.run(make_config("ray", num_workers=2), progress=False)
    assert rounds == [0, 1, 2, 3] and len(ray_run.metrics) == 4
    assert_metrics_close(local.metrics, ray_run.metrics)
    assert_params_close(local.final_params, ray_run.final_params)
    assert ray_session.is_initialized()          # the executor did not shut down our session


def test_fedprox_resumed_on_ray_continues_the_local_trajectory(ray_session, tmp_path):
    alg = {"name": "fedprox", "mu": 0.1, "rounds": 6}
    full = fedopt.run(make_config("local", algorithm=alg), progress=False)
    part = make_config("ray", algorithm={**alg, "rounds": 3})
    fedopt.run(part, out_dir=tmp_path / "run", progress=False)
    assert list((tmp_path / "run" / "checkpoints").glob("round_*.safetensors"))
    resumed = fedopt.run(make_config("ray", algorithm=alg), out_dir=tmp_path / "run",
                         progress=False, resume=True)
    assert [r["round"] for r in resumed.metrics] == list(range(1, 7))
    assert_metrics_close(full.metrics, resumed.metrics)
    assert_params_close(full.final_params, resumed.final_params)


def test_a_dataset_the_workers_cannot_rebuild_is_refused(ray_session):
    other = build_dataset({**make_config()["data"], "beta": 0.5}, seed=7)
    with pytest.raises(ValueError, match="npz"):
        fedopt.run(make_config("ray"), dataset=other, progress=False)


def test_unplaceable_pool_fails_with_a_clear_error(ray_session, local_sim):
    from fedopt.server.ray_executor import RayExecutor

    cfg = load_config(make_config("ray", num_workers=3, num_cpus_per_worker=1.0))
    with pytest.raises(RuntimeError, match="executor.num_workers: cannot place 3"):
        RayExecutor.from_config(cfg, local_sim.data, local_sim.trainer, placement_timeout_s=1.0)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", [
    {"name": "scaffold", "option": "II"},
    {"name": "scaffold", "option": "I"},
    {"name": "feddyn", "alpha": 0.1},
    {"name": "fedspeed", "rho": 0.05, "alpha": 0.5, "variant": "paper"},
    {"name": "fedbuff", "buffer_size": 4},
])
def test_drift_correcting_and_async_runs_equal_local_on_ray(ray_session, algorithm):
    """Per-client state (c_i, H_i), corrections, the SAM quasi-gradient and the virtual clock
    give the same trajectory on Ray workers as in-process (workers get the trainer's options)."""
    cfg = {"clock": {"compute": {"name": "exponential", "shift": 0.5, "scale": 1.0}}} \
        if algorithm["name"] == "fedbuff" else {}
    local = fedopt.run({**make_config("local", algorithm=algorithm), **cfg}, progress=False)
    ray_run = fedopt.run({**make_config("ray", algorithm=algorithm), **cfg}, progress=False)
    assert_metrics_close(local.metrics, ray_run.metrics)
    assert_params_close(local.final_params, ray_run.final_params)


def test_both_executors_implement_the_contract(ray3, local_sim):
    from fedopt.engine.contract import Executor, LiveExecutor

    assert isinstance(local_sim.executor, Executor)
    assert not isinstance(local_sim.executor, LiveExecutor)
    assert isinstance(ray3, Executor) and isinstance(ray3, LiveExecutor)
    assert (local_sim.executor.name, ray3.name) == ("local", "ray")
    assert local_sim.executor.faults() == {}
    ids = np.array([0, 5, 7, 22])
    assert np.array_equal(ray3.job_samples(ids), local_sim.executor.job_samples(ids))
    p = local_sim.state.params
    assert ray3.evaluate(p, train=True) == local_sim.executor.evaluate(p, train=True)


def test_run_jobs_with_per_job_starts_equals_in_process(ray_session, ray3, local_sim,
                                                         monkeypatch):
    """Jobs from different starts and keys (a client twice), float64: the workers' sums equal
    the in-process ``run_jobs``; the stacked starts go into the object store once (models
    above ``INLINE_BYTES``; smaller ones travel inside the tasks)."""
    ids = np.array([3, 10, 4, 3, 17, 8, 22])
    keys = np.array([0, 4, 2, 5, 1, 1, 3])
    w = np.array([0.1, 0.2, 0.05, 0.15, 0.2, 0.1, 0.2])
    g = torch.Generator().manual_seed(4)
    starts = {k: v.unsqueeze(0) + 0.05 * torch.randn((len(ids),) + v.shape, dtype=v.dtype,
                                                     generator=g)
              for k, v in local_sim.state.params.items()}
    corr = {k: 0.01 * torch.randn(v.shape, dtype=v.dtype, generator=g) for k, v in starts.items()}
    for keep in (False, True):
        ref = local_sim.executor.run_jobs(starts, ids, keys, w, correction=corr, keep_local=keep)
        puts = []
        real_put = ray_session.put
        monkeypatch.setattr(ray_session, "put",
                            lambda v, **kw: puts.append(v) or real_put(v, **kw))
        monkeypatch.setattr("fedopt.protocols.ray_messages.INLINE_BYTES", 0)   # as a large model
        got = ray3.run_jobs(starts, ids, keys, w, correction=corr, keep_local=keep)
        monkeypatch.undo()
        assert len(puts) == 1
        assert_output_close(ref, got, keep_local=keep)
        assert np.array_equal(ref.steps, got.steps)
