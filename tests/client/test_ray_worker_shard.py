"""The Ray worker's logic without Ray: shards, data built on the worker, results == in-process."""
import time

import numpy as np
import pytest
import torch
from torch import nn

from fedopt.protocols.ray_messages import to_arrays, to_tensors
from fedopt.client.ray_worker import ShardWorker, WorkerSpec, resolve_device
from fedopt.client.shard import data_fingerprint, fingerprints_match, shard_dataset
from fedopt.config import load_config
from fedopt.data import build_dataset
from fedopt.engine.executor import VectorizedExecutor
from fedopt.engine.local import LocalTrainer
from fedopt.engine.program import SAM, LocalProgram
from fedopt.simulation import Simulation
from tests.server.ray_fixtures import ray_session  # noqa: F401 - one Ray test below

CONFIG = {
    "seed": 5,
    "data": {"name": "synthetic", "alpha": 1.0, "beta": 1.0, "num_clients": 20},
    "model": {"name": "logreg"},
    "algorithm": {"name": "fedprox", "mu": 0.1, "rounds": 2, "clients_per_round": 8},
    "client": {"local_steps": 4, "batch_size": 5, "optimizer": {"name": "adam", "lr": 0.01}},
    "executor": {"name": "local", "dtype": "float64", "chunk_size": 3},
}


@pytest.fixture(scope="module")
def sim():
    return Simulation(load_config(CONFIG))


def _worker(sim, shard, model=None, program=None) -> ShardWorker:
    t = sim.trainer
    spec = WorkerSpec(config=sim.config, device="cpu", optimizer=t.optimizer,
                      trainer_class=type(t), program=program or t.program,
                      trainer_seed=t.seed, model=model)
    return ShardWorker(spec, slot=0, shard_ids=np.asarray(shard))


def _assert_same(a, b, keep_local=False):
    for k in a.delta_sum:
        torch.testing.assert_close(a.delta_sum[k], b.delta_sum[k], rtol=0, atol=1e-12)
    assert a.weight_sum == pytest.approx(b.weight_sum, abs=1e-15)
    assert a.loss_sum == pytest.approx(b.loss_sum, rel=1e-12)
    assert (a.samples, a.updates) == (b.samples, b.updates)
    if keep_local:
        for k in a.local_params:
            torch.testing.assert_close(a.local_params[k], b.local_params[k], rtol=0, atol=1e-12)


def test_shard_keeps_exactly_its_clients_rows_under_global_ids():
    data = build_dataset(CONFIG["data"], seed=5)
    ids = np.array([0, 3, 7, 19])
    sh = shard_dataset(data, ids)
    assert sh.num_clients == data.num_clients
    counts = sh.counts.numpy()
    assert counts[ids].tolist() == data.counts.numpy()[ids].tolist()
    assert counts.sum() == counts[ids].sum() and sh.x.shape[0] == counts.sum()
    for i in ids:
        xs, ys = sh.client(int(i))
        xf, yf = data.client(int(i))
        assert torch.equal(xs, xf) and torch.equal(ys, yf)
    assert sh.x_test.shape[0] == 0
    with pytest.raises(IndexError):
        shard_dataset(data, np.array([20]))


def test_fingerprint_tells_data_sets_apart():
    a = build_dataset(CONFIG["data"], seed=5)
    assert fingerprints_match(data_fingerprint(a), data_fingerprint(build_dataset(CONFIG["data"], seed=5)))
    assert not fingerprints_match(data_fingerprint(a), data_fingerprint(build_dataset(CONFIG["data"], seed=6)))


def test_worker_shard_result_equals_in_process_executor(sim):
    shard = np.arange(0, 20, 2)
    w = _worker(sim, shard)
    assert w.fingerprint == data_fingerprint(build_dataset(CONFIG["data"], seed=5).to(dtype=torch.float64))
    ids = np.array([2, 4, 10, 12, 18])
    weights = np.array([0.1, 0.3, 0.2, 0.25, 0.15])
    params = {k: v + 0.01 for k, v in sim.state.params.items()}
    corr = {k: 0.01 * torch.randn((len(ids),) + v.shape, dtype=v.dtype,
                                  generator=torch.Generator().manual_seed(1))
            for k, v in params.items()}
    opt = sim.client_optimizer.replace(lr=0.003)
    ref = sim.executor.run_round(params, ids, weights, 3, optimizer=opt, keep_local=True,
                                 correction=corr)
    res = w.run_jobs(to_arrays(params), None, ids, np.full(len(ids), 3), weights, optimizer=opt,
                     keep_local=True, correction=to_arrays(corr))
    got = type(ref)(delta_sum=to_tensors(res.delta_sum), weight_sum=res.weight_sum,
                    loss_sum=res.loss_sum, samples=res.samples, updates=res.updates,
                    local_params=to_tensors(res.local_params))
    _assert_same(ref, got, keep_local=True)
    assert w.data_rebuilds == 0


def test_reassigned_clients_are_loaded_on_demand(sim):
    w = _worker(sim, np.arange(0, 20, 2))
    ids = np.array([1, 2, 5, 13])                         # 1, 5, 13 belong to another shard
    weights = np.full(4, 0.25)
    p = sim.state.params
    ref = sim.executor.run_round(p, ids, weights, 1)
    res = w.run_jobs(to_arrays(p), None, ids, np.full(len(ids), 1), weights)
    assert w.data_rebuilds == 1 and set(w.held_clients) >= {1, 5, 13}
    for k in ref.delta_sum:
        torch.testing.assert_close(ref.delta_sum[k], torch.from_numpy(res.delta_sum[k]),
                                   rtol=0, atol=1e-12)
    assert res.samples == ref.samples


def test_worker_holds_only_its_clients_train_rows(sim):
    """memory(): the worker's data set is its clients' train rows (no test rows), counted from
    the coordinator's data set; a reassigned client adds exactly its rows."""
    counts = sim.data.counts.numpy()
    row_bytes = 8 * int(np.prod(sim.data.feature_shape)) + sim.data.y.element_size()  # float64 x
    offsets_bytes = 8 * (sim.data.num_clients + 1)
    w = _worker(sim, np.arange(0, 20, 2))
    mem = w.memory()
    assert mem["rows"] == counts[0::2].sum() < counts.sum()
    assert mem["test_rows"] == 0
    assert mem["data_bytes"] == mem["rows"] * row_bytes + offsets_bytes
    w.ensure_clients(np.array([1, 2]))
    assert w.memory()["rows"] == counts[0::2].sum() + counts[1]


def test_injected_delay_holds_the_answer_without_changing_it(sim):
    w = _worker(sim, np.arange(20))
    ids, weights, p = np.array([3, 4]), np.array([0.5, 0.5]), to_arrays(sim.state.params)
    fast = w.run_jobs(p, None, ids, np.full(len(ids), 0), weights)
    t = time.perf_counter()
    slow = w.run_jobs(p, None, ids, np.full(len(ids), 0), weights, delay_s=0.3)
    assert time.perf_counter() - t >= 0.3
    for k in fast.delta_sum:
        assert np.array_equal(fast.delta_sum[k], slow.delta_sum[k])


def test_worker_trains_with_the_coordinators_local_program(sim):
    """The trainer settings shipped in the spec (prox term, SAM quasi-gradient) are the ones the
    worker's local math uses: equal to an in-process executor with the same trainer."""
    program = LocalProgram(prox_mu=0.7, oracle=SAM(0.05, 0.5, False))
    w = _worker(sim, np.arange(20), program=program)
    ids, weights = np.array([0, 1, 7]), np.array([0.2, 0.3, 0.5])
    got = w.run_jobs(to_arrays(sim.state.params), None, ids, np.full(len(ids), 4), weights)
    t = sim.trainer
    ref_trainer = LocalTrainer(t.fmodel, t.optimizer, program, seed=t.seed)
    ref = VectorizedExecutor.from_config(sim.config, sim.data, ref_trainer).run_round(
        sim.state.params, ids, weights, 4)
    for k in ref.delta_sum:
        np.testing.assert_allclose(got.delta_sum[k], ref.delta_sum[k].numpy(), rtol=0, atol=1e-12)
    plain = _worker(sim, np.arange(20)).run_jobs(to_arrays(sim.state.params), None, ids,
                                                 np.full(len(ids), 4), weights)
    assert not np.allclose(plain.delta_sum["linear.weight"], got.delta_sum["linear.weight"])
    assert got.steps.tolist() == ref.steps.tolist()


def test_user_model_is_used_when_shipped(sim):
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(60, 10)

        def forward(self, x):
            return self.fc(torch.tanh(x))

    model = Tiny().double()
    w = _worker(sim, np.arange(20), model=model)
    assert set(w.trainer.fmodel.module.state_dict()) == {"fc.weight", "fc.bias"}


def test_cuda_request_without_cuda_falls_back_to_cpu():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: no fallback to test")
    dev, note = resolve_device("cuda")
    assert dev.type == "cpu" and "no CUDA device" in note
    assert resolve_device("cpu") == (torch.device("cpu"), None)


def test_worker_runs_jobs_from_its_rows_of_the_stacked_starts(sim):
    """Per-job starts: the worker takes rows ``rows`` of the call's stacked starts; equal, bit
    for bit, to the in-process executor's ``run_jobs`` of those jobs."""
    w = _worker(sim, np.arange(20))
    g = torch.Generator().manual_seed(3)
    starts = {k: v.unsqueeze(0) + 0.05 * torch.randn((6,) + v.shape, dtype=v.dtype, generator=g)
              for k, v in sim.state.params.items()}
    rows = np.array([4, 1, 5])
    ids, keys, weights = np.array([7, 3, 7]), np.array([2, 0, 9]), np.array([0.2, 0.5, 0.3])
    res = w.run_jobs(to_arrays(starts), rows, ids, keys, weights, keep_local=True)
    ref = sim.executor.run_jobs({k: v[torch.as_tensor(rows)] for k, v in starts.items()}, ids,
                                keys, weights, keep_local=True)
    for k in ref.delta_sum:
        assert np.array_equal(res.delta_sum[k], ref.delta_sum[k].numpy())
        assert np.array_equal(res.local_params[k], ref.local_params[k].numpy())


def test_fingerprint_in_chunks_equals_the_whole_sums(monkeypatch):
    """The fingerprint reads a chunk of rows at a time (a memory-mapped store is never copied
    whole) and still gives the sums of the whole data set, within the comparison's tolerance."""
    import fedopt.client.shard as shard

    data = build_dataset(CONFIG["data"], seed=5)
    whole = {"x_sum": float(data.x.double().sum()), "x_abs_sum": float(data.x.double().abs().sum()),
             "y_sum": int(data.y.sum())}
    monkeypatch.setattr(shard, "FINGERPRINT_CHUNK_ELEMENTS", 7 * data.x[:1].numel())  # 7 rows
    fp = shard.data_fingerprint(data)
    assert fp["y_sum"] == whole["y_sum"]
    assert fp["x_sum"] == pytest.approx(whole["x_sum"], rel=1e-12)
    assert fp["x_abs_sum"] == pytest.approx(whole["x_abs_sum"], rel=1e-12)


# -- shards streamed without the whole set (Synthetic, storage: memory) ------------------------

STREAM_SPECS = [
    {"name": "synthetic", "alpha": 0.5, "beta": 1.0, "num_clients": 40, "max_samples": 120},
    {"name": "synthetic", "iid": True, "num_clients": 30, "num_features": 7, "num_classes": 3,
     "min_samples": 5, "max_samples": 90, "test_fraction": 0.0},
]


def _assert_same_data(a, b):
    for f in ("x", "y", "offsets", "x_test", "y_test", "client_test"):
        ta, tb = getattr(a, f), getattr(b, f)
        assert ta.dtype == tb.dtype and ta.shape == tb.shape and torch.equal(ta, tb), f
    assert (a.num_classes, a.name) == (b.num_classes, b.name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spec", STREAM_SPECS)
def test_streamed_shard_equals_the_cut_of_the_whole_set(spec, dtype, monkeypatch):
    """build_shard keeps exactly shard_dataset's rows of the whole set (cast to the run dtype
    ``dtype``, float32 → float64 exact), bit for bit, for id
    sets empty, one client, scattered (unsorted, repeated), all; with chunks of ~100 rows, so
    chunks end inside the shard and clients of one chunk are split between held and not."""
    import fedopt.data.synthetic as synthetic
    from fedopt.client.shard import build_shard

    monkeypatch.setattr(synthetic, "BUILD_CHUNK_ROWS", 100)
    full = build_dataset(spec, seed=11).to(dtype=dtype)
    k = full.num_clients
    for ids in (np.zeros(0, np.int64), np.array([k - 1]), np.array([17, 3, 3, 0, 8, 9]),
                np.arange(k)):
        shard, _ = build_shard(spec, 11, ids, dtype)
        _assert_same_data(shard, shard_dataset(full, ids))
    with pytest.raises(IndexError):
        build_shard(spec, 11, np.array([k]), dtype)
    with pytest.raises(IndexError):
        build_shard(spec, 11, np.array([-1]), dtype)


@pytest.mark.parametrize("spec", STREAM_SPECS)
def test_streamed_fingerprint_is_the_whole_sets(spec, monkeypatch):
    """The fingerprint summed while streaming a 2-client shard equals data_fingerprint of the
    whole set (counts, labels exact; feature sums against exact sums, math.fsum) and
    fingerprints_match agrees; another seed's stream does not match."""
    import math

    import fedopt.data.synthetic as synthetic
    from fedopt.client.shard import build_shard

    monkeypatch.setattr(synthetic, "BUILD_CHUNK_ROWS", 100)
    full = build_dataset(spec, seed=11)
    _, fp = build_shard(spec, 11, np.array([1, 4]))
    ref = data_fingerprint(full)
    assert {k: fp[k] for k in ("num_clients", "counts", "y_sum")} == \
        {k: ref[k] for k in ("num_clients", "counts", "y_sum")}
    x = full.x.double().numpy().ravel()
    assert fp["x_sum"] == pytest.approx(math.fsum(x), rel=1e-12, abs=1e-9)
    assert fp["x_abs_sum"] == pytest.approx(math.fsum(np.abs(x)), rel=1e-12)
    assert fingerprints_match(fp, ref) and fingerprints_match(ref, fp)
    _, other = build_shard(spec, 12, np.array([1, 4]))
    assert not fingerprints_match(other, ref)


def test_only_streamable_data_sets_are_streamed(tmp_path):
    """mmap stores and other builders keep the build-whole-then-cut path (None)."""
    from fedopt.client.shard import build_shard

    mmap = {**STREAM_SPECS[0], "storage": "mmap", "cache_dir": str(tmp_path / "store")}
    assert build_shard(mmap, 11, np.array([0])) is None
    assert build_shard({"name": "digits", "num_clients": 4}, 0, np.array([0])) is None
    assert not (tmp_path / "store").exists()


def test_streamed_shard_never_holds_the_other_clients_rows(monkeypatch):
    """tracemalloc (numpy reports its buffers to it) sees the whole build peak above the
    whole set's arrays, and the streamed 2-client shard's build peak below a quarter of them:
    the shard and one chunk (~100 rows), not the other clients' rows."""
    import tracemalloc

    import fedopt.data.synthetic as synthetic
    from fedopt.client.shard import build_shard

    monkeypatch.setattr(synthetic, "BUILD_CHUNK_ROWS", 100)
    spec = {"name": "synthetic", "num_clients": 200, "max_samples": 200}
    tracemalloc.start()
    try:
        full = build_dataset(spec, seed=3)
        whole_peak = tracemalloc.get_traced_memory()[1]
        whole = sum(t.numel() * t.element_size() for t in
                    (full.x, full.y, full.offsets, full.x_test, full.y_test, full.client_test))
        del full
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        shard, _ = build_shard(spec, 3, np.array([5, 150]))
        shard_peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert whole_peak >= whole
    assert shard.x.shape[0] > 0 and shard_peak < whole / 4


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_worker_shard_equals_the_cut_in_the_run_dtype(sim, dtype):
    """A worker (streamed shard, then the run dtype) holds the rows shard_dataset cuts from
    the whole set cast to the run dtype, also after ensure_clients adds clients; its
    fingerprint matches the coordinator's."""
    import copy

    cfg = copy.deepcopy(sim.config)
    cfg["executor"]["dtype"] = dtype
    t = sim.trainer
    spec = WorkerSpec(config=cfg, device="cpu", optimizer=t.optimizer, trainer_class=type(t),
                      program=t.program, trainer_seed=t.seed)
    full = build_dataset(CONFIG["data"], seed=5).to(dtype=getattr(torch, dtype))
    w = ShardWorker(spec, slot=0, shard_ids=np.array([2, 9, 11]))
    _assert_same_data(w.executor.data, shard_dataset(full, np.array([2, 9, 11])))
    assert fingerprints_match(w.fingerprint, data_fingerprint(full))
    assert w.ensure_clients(np.array([0, 9, 19])) == 2
    _assert_same_data(w.executor.data, shard_dataset(full, np.array([0, 2, 9, 11, 19])))


def test_ray_worker_start_up_peak_is_far_below_the_whole_set(ray_session, sim):
    """In a Ray process, a worker of 2 Synthetic clients out of 2,000 (whole set ≈ 110 MiB of
    float32 rows, twice that in the run's float64) starts with a peak RSS growth below a
    quarter of the whole set's float32 bytes (building the whole set and cutting it grows it
    by more than the whole set); its fingerprint matches the coordinator's."""
    import copy

    def start_up_peak(spec, shard_ids, chunk_rows):
        """In the Ray process (pickled by value): the growth of its peak RSS (ru_maxrss, KiB
        on Linux) while a ShardWorker starts, the rows it then holds, its fingerprint."""
        import resource

        import fedopt.data.synthetic as synthetic
        from fedopt.client.ray_worker import ShardWorker

        synthetic.BUILD_CHUNK_ROWS = chunk_rows
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        w = ShardWorker(spec, slot=0, shard_ids=shard_ids)
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
        return grown, w.memory()["rows"], w.fingerprint

    from fedopt.data.checks import seed_streams
    from fedopt.data.synthetic import draw_sizes
    cfg = copy.deepcopy(sim.config)
    cfg["data"] = {"name": "synthetic", "num_clients": 2000}
    t = sim.trainer
    spec = WorkerSpec(config=cfg, device="cpu", optimizer=t.optimizer, trainer_class=type(t),
                      program=t.program, trainer_seed=t.seed, num_threads=1)
    sizes = draw_sizes(seed_streams(5, 4)[1], 2000, 50, 1000)
    whole = int(sizes.sum()) * (4 * 60 + 16)
    task = ray_session.remote(num_cpus=0.25)(start_up_peak)
    grown, rows, fp = ray_session.get(task.remote(spec, np.array([3, 1500]), 4096))
    assert 0 < rows < 2000 and grown < whole / 4, (grown, whole)
    assert fingerprints_match(fp, data_fingerprint(build_dataset(cfg["data"], seed=5)))
